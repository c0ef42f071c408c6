//! Write Remote Rollout agent loops for `rollout-host` as WebAssembly
//! components.
//!
//! An agent is a type implementing [`Agent`] (name, tools, run loop),
//! exported with [`export_agent!`]. Tools are declared once in a
//! [`Toolbox`]: name, description, JSON schema and handler; the toolbox turns
//! the model's tool calls into `role: tool` messages. [`RolloutContext`] is the
//! agent's only way out of the sandbox: [`chat`](RolloutContext::chat) with the
//! trainer's LLM, [`log_event`](RolloutContext::log_event) and
//! [`complete`](RolloutContext::complete) / [`error`](RolloutContext::error).
//!
//! ```ignore
//! use rollout_guest_sdk::{Agent, RolloutContext, RolloutRequest, ToolDefinition, export_agent};
//!
//! #[derive(Default)]
//! struct Echo;
//!
//! impl Agent for Echo {
//!     fn name(&self) -> String { "echo".into() }
//!     fn tools(&self, _request: &RolloutRequest) -> Vec<ToolDefinition> { Vec::new() }
//!     fn run(&self, ctx: &mut RolloutContext) -> Result<(), rollout_guest_sdk::AgentError> {
//!         let mut messages = ctx.request().messages.clone();
//!         let reply = ctx.chat(&messages)?;
//!         messages.push(reply.message);
//!         ctx.complete(&messages, &reply.finish_reason, None)?;
//!         Ok(())
//!     }
//! }
//!
//! export_agent!(Echo);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2 --release` (or
//! `cargo component build --release`).

// Lets the generated bindings name this crate by its public path, so the
// `export!` macro they define also works when expanded in a plugin crate.
extern crate self as rollout_guest_sdk;

mod context;
mod request;
mod tools;

pub use context::{AgentError, ChatResult, RolloutContext, Usage};
pub use request::RolloutRequest;
pub use serde_json::{self, Map, Value, json};
pub use tools::{ToolError, Toolbox, format_tool_value, number_arg};

/// WIT bindings of the `osmosis:rollout/rollout-agent` world (generated).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "rollout-agent",
        pub_export_macro: true,
        export_macro_name: "__export_rollout_agent",
        default_bindings_module: "::rollout_guest_sdk::bindings",
        runtime_path: "::rollout_guest_sdk::__private::wit_bindgen::rt",
    });
}

/// `value` as JSON text. Faster than `Value::to_string`, which goes through
/// `fmt::Formatter` piece by piece.
pub(crate) fn json_text(value: &Value) -> String {
    // A `Value` always serializes (its map keys are strings).
    serde_json::to_string(value).unwrap_or_default()
}

/// A tool offered to the model, as returned by [`Agent::tools`].
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDefinition {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

/// An agent loop: what a plugin implements.
///
/// Values are created with `Default` for each call; every rollout runs in a
/// fresh sandboxed instance, so globals never leak between rollouts.
pub trait Agent: Default + 'static {
    /// A short name for the agent loop, shown in the server's `/health`.
    fn name(&self) -> String;

    /// The tools offered for this rollout (returned to the trainer at init).
    fn tools(&self, request: &RolloutRequest) -> Vec<ToolDefinition>;

    /// The agent loop. End it with [`RolloutContext::complete`] (or
    /// [`RolloutContext::error`]); returning an error without completing
    /// makes the host report the rollout as failed with that message.
    fn run(&self, ctx: &mut RolloutContext) -> Result<(), AgentError>;
}

/// Exports an [`Agent`] type as the plugin's `agent` interface.
#[macro_export]
macro_rules! export_agent {
    ($agent:ty) => {
        #[doc(hidden)]
        struct __RolloutAgentExport;

        impl $crate::bindings::exports::osmosis::rollout::agent::Guest for __RolloutAgentExport {
            fn name() -> ::std::string::String {
                $crate::__private::name::<$agent>()
            }
            fn get_tools(
                request: $crate::bindings::osmosis::rollout::types::RolloutRequest,
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::bindings::osmosis::rollout::types::ToolDefinition>,
                ::std::string::String,
            > {
                $crate::__private::get_tools::<$agent>(request)
            }
            fn run(
                request: $crate::bindings::osmosis::rollout::types::RolloutRequest,
            ) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__private::run::<$agent>(request)
            }
        }

        $crate::bindings::__export_rollout_agent!(__RolloutAgentExport with_types_in $crate::bindings);
    };
}

/// Glue called by [`export_agent!`]; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use crate::bindings::osmosis::rollout::types as wit;
    use crate::{Agent, RolloutContext, RolloutRequest};

    pub fn name<A: Agent>() -> String {
        A::default().name()
    }

    pub fn get_tools<A: Agent>(
        request: wit::RolloutRequest,
    ) -> Result<Vec<wit::ToolDefinition>, String> {
        let request = RolloutRequest::from_wit(request)?;
        let tools = A::default().tools(&request);
        Ok(tools
            .into_iter()
            .map(|t| wit::ToolDefinition {
                name: t.name,
                description: t.description,
                parameters: crate::json_text(&t.parameters),
            })
            .collect())
    }

    pub fn run<A: Agent>(request: wit::RolloutRequest) -> Result<(), String> {
        let request = RolloutRequest::from_wit(request)?;
        let mut ctx = RolloutContext::new(request);
        A::default().run(&mut ctx).map_err(|e| e.to_string())
    }
}
