//! Bodies the server sends: the init answer and the completion callback.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// An OpenAI function tool: `{"type": "function", "function": {...}}`.
#[derive(Debug, Clone, Serialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: ToolFunction,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolFunction {
    pub name: String,
    pub description: String,
    /// The JSON Schema object as the plugin wrote it.
    pub parameters: Box<RawValue>,
}

impl Tool {
    /// A function tool as a plugin described it: `parameters` must be the
    /// text of a JSON object (a JSON Schema), passed on as written. The
    /// error is the tool's name.
    pub fn from_plugin(
        name: String,
        description: String,
        parameters: String,
    ) -> Result<Self, String> {
        match RawValue::from_string(parameters) {
            Ok(parameters) if parameters.get().starts_with('{') => Ok(Self {
                kind: "function",
                function: ToolFunction {
                    name,
                    description,
                    parameters,
                },
            }),
            _ => Err(name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RolloutStatus {
    Completed,
    Error,
}

/// Per-rollout measurements sent with the completion callback.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Metrics {
    pub total_latency_ms: f64,
    pub llm_latency_ms: f64,
    pub tool_latency_ms: f64,
    pub num_llm_calls: u64,
    pub num_tool_calls: u64,
    pub prompt_tokens: u64,
    pub response_tokens: u64,
    pub max_context_tokens: u64,
    /// Time the plugin spent executing (not waiting on the trainer).
    pub guest_cpu_ms: f64,
    /// Largest linear memory the plugin's instance reached.
    pub guest_peak_memory_bytes: u64,
}

/// The body of `POST {server_url}/v1/rollout/completed`. Null fields are
/// omitted.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutResponse {
    pub rollout_id: String,
    pub status: RolloutStatus,
    /// Each message's JSON text, written as is.
    pub final_messages: Vec<super::Message>,
    pub finish_reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward: Option<f64>,
    pub metrics: Metrics,
    pub extra_fields: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn no_nulls_on_the_wire() {
        let r = RolloutResponse {
            rollout_id: "r".into(),
            status: RolloutStatus::Completed,
            final_messages: vec![],
            finish_reason: "stop".into(),
            error_message: None,
            reward: None,
            metrics: Metrics::default(),
            extra_fields: Map::new(),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], json!("COMPLETED"));
        assert!(v.get("reward").is_none() && v.get("error_message").is_none());
        let tool = serde_json::to_value(
            Tool::from_plugin("add".into(), "Add".into(), "{}".into()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            tool,
            json!({"type": "function", "function": {"name": "add", "description": "Add", "parameters": {}}})
        );
    }
}
