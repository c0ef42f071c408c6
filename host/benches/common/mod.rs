//! Shared by the benchmarks: building the calculator plugin.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `plugins/calc` for wasm32-wasip2 (release) and returns its path.
pub fn build_calc() -> PathBuf {
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "calc",
            "--manifest-path",
        ])
        .arg(plugins.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", plugins.join("target"))
        .status()
        .expect("run cargo");
    assert!(status.success(), "building calc.wasm failed");
    plugins.join("target/wasm32-wasip2/release/calc.wasm")
}
