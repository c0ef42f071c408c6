use crate::bindings::osmosis::rollout::types as wit;
use serde_json::{Map, Value};

/// The trainer's rollout request, parsed.
#[derive(Debug, Clone)]
pub struct RolloutRequest {
    pub rollout_id: String,
    /// The conversation so far (OpenAI chat messages).
    pub messages: Vec<Value>,
    /// Sampling parameters; [`RolloutContext::chat`](crate::RolloutContext::chat) applies them.
    pub completion_params: Map<String, Value>,
    pub tool_server_url: Option<String>,
    /// Advisory cap on LLM calls.
    pub max_turns: u32,
    /// Advisory cap on the sum of completion tokens.
    pub max_tokens_total: u64,
    /// Free-form metadata, e.g. `ground_truth`.
    pub metadata: Map<String, Value>,
}

impl RolloutRequest {
    pub(crate) fn from_wit(r: wit::RolloutRequest) -> Result<Self, String> {
        Ok(Self {
            messages: parse_array(&r.messages, "messages")?,
            completion_params: parse_object(&r.completion_params, "completion_params")?,
            metadata: parse_object(&r.metadata, "metadata")?,
            rollout_id: r.rollout_id,
            tool_server_url: r.tool_server_url,
            max_turns: r.max_turns,
            max_tokens_total: r.max_tokens_total,
        })
    }
}

fn parse(text: &str, what: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("host sent malformed {what}: {e}"))
}

fn parse_array(text: &str, what: &str) -> Result<Vec<Value>, String> {
    match parse(text, what)? {
        Value::Array(items) => Ok(items),
        _ => Err(format!("host sent {what} that is not a JSON array")),
    }
}

fn parse_object(text: &str, what: &str) -> Result<Map<String, Value>, String> {
    match parse(text, what)? {
        Value::Object(map) => Ok(map),
        _ => Err(format!("host sent {what} that is not a JSON object")),
    }
}
