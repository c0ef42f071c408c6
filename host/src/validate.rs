//! `--validate`: loads the plugin as the server would, asks it for its tools
//! on a sample request and checks them, without serving (what the
//! reference's `osmosis validate` does for a Python agent).

use crate::protocol::Tool;
use crate::runtime::{
    AllocatorChoice, CompileCache, GuestError, Limits, LoadError, Plugin, RolloutHost, Runtime,
    RuntimeConfig, WitRolloutRequest,
};
use std::path::Path;
use std::sync::Arc;

/// Why a plugin did not validate.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{path}: {reason}")]
    Tools { path: String, reason: String },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// What a valid plugin offers.
#[derive(Debug)]
pub struct Report {
    pub agent: String,
    pub tools: Vec<Tool>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "agent \"{}\" with ", self.agent)?;
        if self.tools.is_empty() {
            return f.write_str("no tools");
        }
        let names: Vec<&str> = self
            .tools
            .iter()
            .map(|t| t.function.name.as_str())
            .collect();
        write!(f, "{} tool(s): {}", names.len(), names.join(", "))
    }
}

/// The request `get-tools` is asked with: one user message, no parameters,
/// no metadata.
fn sample_request() -> WitRolloutRequest {
    WitRolloutRequest {
        rollout_id: "validate".into(),
        messages: r#"[{"role":"user","content":"validate"}]"#.into(),
        completion_params: "{}".into(),
        tool_server_url: None,
        max_turns: 10,
        max_tokens_total: 8192,
        metadata: "{}".into(),
    }
}

/// Asks a loaded plugin for its tools on the sample request, checked as
/// an init's are.
pub async fn sample_tools(plugin: &Plugin) -> Result<Vec<Tool>, GuestError> {
    let (_, tools) = plugin
        .start(RolloutHost::detached("validate"), &sample_request())
        .await?;
    Ok(tools)
}

/// Loads `plugin` under `limits` and checks its tools.
pub fn validate(
    plugin: &Path,
    limits: Limits,
    allocator: AllocatorChoice,
    compile_cache: Option<CompileCache>,
) -> Result<Report, ValidateError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ValidateError::Runtime)?;
    rt.block_on(async {
        let runtime = Arc::new(Runtime::new(RuntimeConfig {
            limits,
            instance_slots: 2,
            allocator,
            warm_slots: 0,
            compile_cache,
        })?);
        let loaded = runtime.load(plugin).await?;
        let tools = sample_tools(&loaded)
            .await
            .map_err(|e| ValidateError::Tools {
                path: plugin.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(Report {
            agent: loaded.name().to_owned(),
            tools,
        })
    })
}
