use crate::RolloutRequest;
use crate::bindings::osmosis::rollout::host;
use crate::bindings::osmosis::rollout::types as wit;
use serde_json::{Map, Value};
use std::fmt;
use std::time::Instant;

/// Token counts of one chat completion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// One answer from the trainer's LLM.
#[derive(Debug, Clone)]
pub struct ChatResult {
    /// The assistant message; append it to the history unchanged.
    pub message: Value,
    /// "stop", "tool_calls", "length", ...
    pub finish_reason: String,
    pub usage: Usage,
    pub token_ids: Option<Vec<u32>>,
    pub prompt_token_ids: Option<Vec<u32>>,
    /// The log-probabilities as the trainer sent them (JSON text), when it
    /// sent them. Kept as text: trainers send them for every token by
    /// default, and most agents never read them; see
    /// [`logprobs`](Self::logprobs).
    pub logprobs_json: Option<String>,
}

impl ChatResult {
    /// The message's `tool_calls` (empty when there are none).
    pub fn tool_calls(&self) -> &[Value] {
        self.message
            .get("tool_calls")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    pub fn has_tool_calls(&self) -> bool {
        !self.tool_calls().is_empty()
    }

    /// The message's text content, if any.
    pub fn content(&self) -> Option<&str> {
        self.message.get("content").and_then(Value::as_str)
    }

    /// The log-probabilities, decoded (each call decodes them again).
    pub fn logprobs(&self) -> Option<Value> {
        self.logprobs_json
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
    }
}

/// Why an agent stopped: a failed host call or the agent's own error.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentError {
    /// `chat` failed (trainer unreachable, rejected the call, ...).
    Chat(String),
    /// `complete` was refused.
    Complete(String),
    /// The agent's own error.
    Other(String),
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::Chat(m) => write!(f, "chat failed: {m}"),
            AgentError::Complete(m) => write!(f, "complete failed: {m}"),
            AgentError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for AgentError {}

impl From<String> for AgentError {
    fn from(m: String) -> Self {
        AgentError::Other(m)
    }
}

impl From<&str> for AgentError {
    fn from(m: &str) -> Self {
        AgentError::Other(m.to_owned())
    }
}

fn describe_chat_error(e: wit::ChatError) -> String {
    match e {
        wit::ChatError::Transport(m) => format!("trainer unreachable: {m}"),
        wit::ChatError::Timeout(m) => format!("trainer timed out: {m}"),
        wit::ChatError::TrainerRejected(e) => {
            format!(
                "trainer rejected the request with HTTP {}: {}",
                e.status, e.body
            )
        }
        wit::ChatError::TrainerFailed(e) => {
            format!("trainer failed with HTTP {}: {}", e.status, e.body)
        }
        wit::ChatError::BadResponse(m) => format!("unusable trainer response: {m}"),
        wit::ChatError::InvalidRequest(m) => format!("invalid chat request: {m}"),
    }
}

fn describe_complete_error(e: wit::CompleteError) -> AgentError {
    AgentError::Complete(match e {
        wit::CompleteError::AlreadyCompleted => "the rollout was already completed".to_owned(),
        wit::CompleteError::Invalid(m) => m,
    })
}

/// The agent's handle on its rollout: the request, the host calls, and the
/// tool metrics the host cannot see.
pub struct RolloutContext {
    request: RolloutRequest,
    num_tool_calls: u32,
    tool_latency_ms: f64,
    completion_tokens: u64,
    debug_log_enabled: bool,
}

impl RolloutContext {
    pub(crate) fn new(request: RolloutRequest) -> Self {
        Self {
            request,
            num_tool_calls: 0,
            tool_latency_ms: 0.0,
            completion_tokens: 0,
            debug_log_enabled: host::debug_log_enabled(),
        }
    }

    pub fn request(&self) -> &RolloutRequest {
        &self.request
    }

    /// Sum of `completion_tokens` over this rollout's chat calls so far.
    pub fn completion_tokens(&self) -> u64 {
        self.completion_tokens
    }

    /// Calls the trainer's LLM with the full history and the request's
    /// `completion_params`.
    pub fn chat(&mut self, messages: &[Value]) -> Result<ChatResult, AgentError> {
        self.chat_call(messages, None)
    }

    /// Like [`chat`](Self::chat) with explicit sampling parameters (they
    /// replace `completion_params`; unknown keys such as `tools` or `seed`
    /// are forwarded to the trainer).
    pub fn chat_with(
        &mut self,
        messages: &[Value],
        params: &Map<String, Value>,
    ) -> Result<ChatResult, AgentError> {
        self.chat_call(
            messages,
            Some(serde_json::to_string(params).map_err(json_err)?),
        )
    }

    fn chat_call(
        &mut self,
        messages: &[Value],
        params: Option<String>,
    ) -> Result<ChatResult, AgentError> {
        let request = wit::ChatRequest {
            messages: serde_json::to_string(messages).map_err(json_err)?,
            params,
        };
        let reply = host::chat(&request).map_err(|e| AgentError::Chat(describe_chat_error(e)))?;
        let message = serde_json::from_str(&reply.message)
            .map_err(|e| AgentError::Chat(format!("host sent a malformed message: {e}")))?;
        self.completion_tokens += reply.usage.completion_tokens;
        Ok(ChatResult {
            message,
            finish_reason: reply.finish_reason,
            usage: Usage {
                prompt_tokens: reply.usage.prompt_tokens,
                completion_tokens: reply.usage.completion_tokens,
                total_tokens: reply.usage.total_tokens,
            },
            token_ids: reply.token_ids,
            prompt_token_ids: reply.prompt_token_ids,
            logprobs_json: reply.logprobs,
        })
    }

    /// Whether the server keeps a debug log (`--log`). Check it before
    /// building expensive events.
    pub fn debug_log_enabled(&self) -> bool {
        self.debug_log_enabled
    }

    /// Appends a debug event (a JSON object) to the rollout's debug log; a
    /// no-op when the server runs without `--log`.
    pub fn log_event(&self, event: &str, data: Value) {
        if self.debug_log_enabled {
            host::log_event(event, &crate::json_text(&data));
        }
    }

    /// Counts one tool call and its latency in the rollout's metrics.
    /// [`Toolbox::execute`](crate::Toolbox::execute) does this for you.
    pub fn record_tool_call(&mut self, latency_ms: f64) {
        self.num_tool_calls += 1;
        self.tool_latency_ms += latency_ms;
    }

    /// Ends the rollout successfully: the trainer receives `messages` (which
    /// must start with the request's messages), `finish_reason` and `reward`.
    pub fn complete(
        &mut self,
        messages: &[Value],
        finish_reason: &str,
        reward: Option<f64>,
    ) -> Result<(), AgentError> {
        self.complete_with(messages, finish_reason, reward, Map::new())
    }

    /// [`complete`](Self::complete) with free-form `extra_fields` for the trainer.
    pub fn complete_with(
        &mut self,
        messages: &[Value],
        finish_reason: &str,
        reward: Option<f64>,
        extra_fields: Map<String, Value>,
    ) -> Result<(), AgentError> {
        let completion = wit::Completion {
            status: wit::RolloutStatus::Completed,
            final_messages: serde_json::to_string(messages).map_err(json_err)?,
            finish_reason: finish_reason.to_owned(),
            error_message: None,
            reward,
            tool_metrics: self.tool_metrics(),
            extra_fields: (!extra_fields.is_empty())
                .then(|| crate::json_text(&Value::Object(extra_fields))),
        };
        host::complete(&completion).map_err(describe_complete_error)
    }

    /// Ends the rollout as failed: the trainer receives status ERROR with
    /// `message`, and `messages` as the history so far.
    pub fn error(&mut self, messages: &[Value], message: &str) -> Result<(), AgentError> {
        let completion = wit::Completion {
            status: wit::RolloutStatus::Error,
            final_messages: serde_json::to_string(messages).map_err(json_err)?,
            finish_reason: "error".to_owned(),
            error_message: Some(message.to_owned()),
            reward: None,
            tool_metrics: self.tool_metrics(),
            extra_fields: None,
        };
        host::complete(&completion).map_err(describe_complete_error)
    }

    fn tool_metrics(&self) -> wit::ToolMetrics {
        wit::ToolMetrics {
            num_tool_calls: self.num_tool_calls,
            tool_latency_ms: self.tool_latency_ms,
        }
    }
}

/// Measures a tool call for [`RolloutContext::record_tool_call`].
pub(crate) fn elapsed_ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

fn json_err(e: serde_json::Error) -> AgentError {
    AgentError::Other(format!("JSON encoding failed: {e}"))
}
