//! Links the plugin with 2 MiB of initial linear memory (1 MiB of it is
//! Rust's shadow stack) instead of growing it on the first allocations: a
//! plugin that never grows its memory spares the host two page-protection
//! changes (`mprotect`, with TLB shootdowns on every core) per rollout.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_FAMILY").is_ok_and(|f| f.split(',').any(|f| f == "wasm")) {
        println!("cargo:rustc-link-arg=--initial-memory=2097152");
    }
}
