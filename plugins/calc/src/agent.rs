//! The calculator agent loop. Tools: add, subtract, multiply, divide.
//! Reward: the number after `#### ` in the last assistant message against
//! `metadata.ground_truth`. (Also compiled into the `misbehave` test
//! plugin, whose default mode is this agent.)

use rollout_guest_sdk::{
    Agent, AgentError, RolloutContext, RolloutRequest, ToolDefinition, ToolError, Toolbox, Value,
    json, number_arg,
};

#[derive(Default)]
pub struct Calculator;

fn binary_tool(
    toolbox: Toolbox,
    name: &str,
    description: &str,
    op: fn(f64, f64) -> Result<f64, ToolError>,
) -> Toolbox {
    let schema = json!({
        "type": "object",
        "properties": {
            "a": {"type": "number", "description": "First number"},
            "b": {"type": "number", "description": "Second number"}
        },
        "required": ["a", "b"]
    });
    toolbox.tool(name, description, schema, move |args| {
        let result = op(number_arg(args, "a")?, number_arg(args, "b")?)?;
        if result.is_finite() {
            Ok(json!(result))
        } else {
            Err(ToolError("result is not a finite number".into()))
        }
    })
}

fn toolbox() -> Toolbox {
    let t = Toolbox::new();
    let t = binary_tool(t, "add", "Add two numbers", |a, b| Ok(a + b));
    let t = binary_tool(
        t,
        "subtract",
        "Subtract the second number from the first",
        |a, b| Ok(a - b),
    );
    let t = binary_tool(t, "multiply", "Multiply two numbers", |a, b| Ok(a * b));
    binary_tool(
        t,
        "divide",
        "Divide the first number by the second",
        |a, b| {
            if b == 0.0 {
                Err(ToolError("division by zero".into()))
            } else {
                Ok(a / b)
            }
        },
    )
}

impl Agent for Calculator {
    fn name(&self) -> String {
        "calculator".into()
    }

    fn tools(&self, _request: &RolloutRequest) -> Vec<ToolDefinition> {
        toolbox().definitions()
    }

    fn run(&self, ctx: &mut RolloutContext) -> Result<(), AgentError> {
        let tools = toolbox();
        let (max_turns, max_tokens_total) =
            (ctx.request().max_turns, ctx.request().max_tokens_total);
        let mut messages = ctx.request().messages.clone();
        let mut finish_reason = "max_turns".to_owned();
        // The events are built only when the server keeps a debug log.
        let logging = ctx.debug_log_enabled();

        for turn in 0..max_turns {
            if logging {
                ctx.log_event(
                    "pre_llm",
                    json!({"turn": turn, "num_messages": messages.len()}),
                );
            }
            let reply = ctx.chat(&messages)?;
            let tool_calls = reply.tool_calls().to_vec();
            if logging {
                ctx.log_event(
                    "llm_response",
                    json!({
                        "turn": turn,
                        "has_tool_calls": !tool_calls.is_empty(),
                        "num_tool_calls": tool_calls.len(),
                        "finish_reason": reply.finish_reason,
                        "completion_tokens": reply.usage.completion_tokens,
                    }),
                );
            }
            messages.push(reply.message);
            if tool_calls.is_empty() {
                finish_reason = reply.finish_reason;
                break;
            }
            let results = tools.execute(ctx, &tool_calls);
            if logging {
                ctx.log_event(
                    "tool_results",
                    json!({
                        "turn": turn,
                        "num_tool_results": results.len(),
                        "results": results.iter().map(|m| m["content"].clone()).collect::<Vec<_>>(),
                    }),
                );
            }
            messages.extend(results);
            if ctx.completion_tokens() >= max_tokens_total {
                finish_reason = "max_tokens".to_owned();
                break;
            }
        }

        let reward = reward(&messages, ctx.request());
        if logging {
            ctx.log_event(
                "rollout_complete",
                json!({
                    "finish_reason": finish_reason,
                    "reward": reward,
                    "num_messages": messages.len(),
                }),
            );
        }
        ctx.complete(&messages, &finish_reason, reward)
    }
}

/// 1.0 when the last assistant message's `#### <number>` equals
/// `metadata.ground_truth` (as numbers, |diff| < 1e-7), else 0.0; `None`
/// without a ground truth.
fn reward(messages: &[Value], request: &RolloutRequest) -> Option<f64> {
    let truth = match request.metadata.get("ground_truth")? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => parse_number(s),
        _ => None,
    };
    let answer = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .and_then(|m| m.get("content").and_then(Value::as_str))
        .and_then(extract_answer);
    Some(match (answer, truth) {
        (Some(a), Some(t)) if (a - t).abs() < 1e-7 => 1.0,
        _ => 0.0,
    })
}

/// The number following the last `####` in `text`.
fn extract_answer(text: &str) -> Option<f64> {
    let (_, after) = text.rsplit_once("####")?;
    let token: String = after
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | ',' | 'e' | 'E'))
        .collect();
    parse_number(&token)
}

fn parse_number(s: &str) -> Option<f64> {
    s.trim()
        .replace(',', "")
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
}
