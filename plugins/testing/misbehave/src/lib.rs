//! A plugin for the host's tests: `metadata.mode` picks how it misbehaves.
//! Any other mode behaves like a one-turn echo agent.

use rollout_guest_sdk::{
    Agent, AgentError, RolloutContext, RolloutRequest, ToolDefinition, Value, export_agent, json,
};

#[derive(Default)]
struct Misbehave;

fn mode(request: &RolloutRequest) -> &str {
    request
        .metadata
        .get("mode")
        .and_then(Value::as_str)
        .unwrap_or("")
}

impl Agent for Misbehave {
    fn name(&self) -> String {
        "misbehave".into()
    }

    fn tools(&self, request: &RolloutRequest) -> Vec<ToolDefinition> {
        if mode(request) == "trap-in-get-tools" {
            panic!("misbehave: trap in get-tools");
        }
        Vec::new()
    }

    fn run(&self, ctx: &mut RolloutContext) -> Result<(), AgentError> {
        let request = ctx.request().clone();
        let mut messages = request.messages.clone();
        match mode(&request) {
            "trap" => panic!("misbehave: deliberate trap"),
            "no-complete" => Ok(()),
            "error" => Err("misbehave: deliberate error".into()),
            "complete-twice" => {
                ctx.complete(&messages, "stop", Some(1.0))?;
                let second = ctx.complete(&messages, "stop", Some(0.0));
                // Report what the host said about the second call.
                let status = match second {
                    Err(e) => format!("refused: {e}"),
                    Ok(()) => "accepted".to_owned(),
                };
                ctx.log_event("second_complete", json!({"status": status}));
                Ok(())
            }
            "chat-after-complete" => {
                ctx.complete(&messages, "stop", None)?;
                let status = match ctx.chat(&messages) {
                    Err(e) => format!("refused: {e}"),
                    Ok(_) => "accepted".to_owned(),
                };
                ctx.log_event("chat_after_complete", json!({"status": status}));
                Ok(())
            }
            "rewrite-history" => {
                let reply = ctx.chat(&messages)?;
                messages.push(reply.message);
                // Drop the history and start over: not append-only.
                let rewritten = vec![json!({"role": "user", "content": "something else"})];
                ctx.chat(&rewritten)?;
                ctx.complete(&rewritten, "stop", None)
            }
            _ => {
                let reply = ctx.chat(&messages)?;
                messages.push(reply.message);
                ctx.complete(&messages, &reply.finish_reason, None)
            }
        }
    }
}

export_agent!(Misbehave);
