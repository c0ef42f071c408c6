//! A plugin for the host's tests: it starts and tells its name, and every
//! `get-tools` call traps, whatever the request. The admin API's upload
//! check (and `--validate`) must refuse it before it serves a rollout.

use rollout_guest_sdk::{
    Agent, AgentError, RolloutContext, RolloutRequest, ToolDefinition, export_agent,
};

#[derive(Default)]
struct BrokenTools;

impl Agent for BrokenTools {
    fn name(&self) -> String {
        "broken-tools".into()
    }

    fn tools(&self, _request: &RolloutRequest) -> Vec<ToolDefinition> {
        panic!("broken-tools: get-tools always traps")
    }

    fn run(&self, ctx: &mut RolloutContext) -> Result<(), AgentError> {
        let messages = ctx.request().messages.clone();
        ctx.complete(&messages, "stop", None)
    }
}

export_agent!(BrokenTools);
