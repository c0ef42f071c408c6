//! Host bindings of `wit/rollout.wit` (world `rollout-agent`).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "rollout-agent",
    imports: { default: async | trappable },
    exports: { default: async },
});
