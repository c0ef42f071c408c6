//! The guest's only ways out: `chat`, `log-event`, `debug-log-enabled` and
//! `complete` (WIT interface `osmosis:rollout/host`).

use super::bindings::osmosis::rollout::host::Host;
use super::bindings::osmosis::rollout::types::{
    self as wit, ChatError, ChatRequest, ChatResponse, CompleteError, HttpError, Usage,
};
use super::limits::LimitExceeded;
use super::state::{Completion, RolloutHost, StoreState};
use crate::protocol::{RolloutStatus, first_difference, split_messages};
use crate::trainer::{TrainerError, chat_body};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::time::Instant;

impl wit::Host for StoreState {}

impl Host for StoreState {
    async fn chat(
        &mut self,
        request: ChatRequest,
    ) -> wasmtime::Result<Result<ChatResponse, ChatError>> {
        self.host.check_chat_limits(&request)?;
        Ok(self.host.chat(request).await)
    }

    async fn log_event(&mut self, event: String, data: String) -> wasmtime::Result<()> {
        let size = event.len() + data.len();
        let max = self.host.limits.max_log_event_bytes;
        if size > max {
            return Err(LimitExceeded::LogEvent { size, max }.into());
        }
        self.host.log_event(&event, &data);
        Ok(())
    }

    async fn debug_log_enabled(&mut self) -> wasmtime::Result<bool> {
        Ok(self.host.debug_log.is_some())
    }

    async fn complete(
        &mut self,
        completion: wit::Completion,
    ) -> wasmtime::Result<Result<(), CompleteError>> {
        let size = completion.final_messages.len();
        let max = self.host.limits.max_final_messages_bytes;
        if size > max {
            return Err(LimitExceeded::FinalMessages { size, max }.into());
        }
        Ok(self.host.complete(completion))
    }
}

fn invalid(msg: impl Into<String>) -> ChatError {
    ChatError::InvalidRequest(msg.into())
}

fn parse_object(text: &str, what: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(format!("{what} must be a JSON object")),
        Err(e) => Err(format!("{what} is not valid JSON: {e}")),
    }
}

impl RolloutHost {
    /// Limits that stop the guest (a trap), not just refuse the call.
    fn check_chat_limits(&mut self, request: &ChatRequest) -> Result<(), LimitExceeded> {
        self.chat_calls += 1;
        if self.chat_calls > self.limits.max_chat_calls {
            return Err(LimitExceeded::ChatCalls(self.limits.max_chat_calls));
        }
        let size = request.messages.len() + request.params.as_ref().map_or(0, String::len);
        let max = self.limits.max_history_bytes;
        if size > max {
            return Err(LimitExceeded::History { size, max });
        }
        Ok(())
    }

    async fn chat(&mut self, request: ChatRequest) -> Result<ChatResponse, ChatError> {
        if self.completion.is_some() {
            return Err(invalid("chat called after complete"));
        }
        let Some(trainer) = self.trainer.clone() else {
            return Err(invalid("chat is not available outside a rollout"));
        };
        // The history crosses as JSON text and goes on to the trainer as
        // that text: checked, never decoded and re-encoded.
        let count = self
            .history
            .check_next(&request.messages)
            .map_err(invalid)?;
        let own_fields;
        let fields = match &request.params {
            Some(text) => {
                let params = parse_object(text, "params").map_err(invalid)?;
                own_fields = trainer.dialect.fields(&params, &self.rollout_id);
                &own_fields
            }
            None => self.chat_fields.get_or_insert_with(|| {
                let params = std::mem::take(&mut self.completion_params);
                trainer.dialect.fields(&params, &self.rollout_id)
            }),
        };
        let body = chat_body(&request.messages, fields);
        if let Some(watch) = &trainer.watch {
            watch.before(&request.messages).await;
        }
        let started = Instant::now();
        let result = trainer
            .client
            .chat(&trainer.chat_url, trainer.api_key.as_deref(), body.into())
            .await;
        self.metrics.llm_latency_ms += started.elapsed().as_secs_f64() * 1000.0;
        if let Some(watch) = &trainer.watch {
            watch.after(result.as_ref());
        }
        let completion = result.map_err(|e| {
            tracing::warn!(error = %e, "chat failed");
            chat_error(e)
        })?;

        let m = &mut self.metrics;
        m.num_llm_calls += 1;
        m.prompt_tokens += completion.prompt_tokens;
        m.response_tokens += completion.completion_tokens;
        m.max_context_tokens = m.max_context_tokens.max(completion.total_tokens);
        let message = completion.message.get().to_owned();
        self.history
            .extend(&request.messages, count, completion.message);
        Ok(ChatResponse {
            message,
            finish_reason: completion.finish_reason,
            usage: Usage {
                prompt_tokens: completion.prompt_tokens,
                completion_tokens: completion.completion_tokens,
                total_tokens: completion.total_tokens,
            },
            token_ids: completion.token_ids,
            prompt_token_ids: completion.prompt_token_ids,
            logprobs: completion.logprobs,
        })
    }

    fn log_event(&mut self, event: &str, data: &str) {
        let Some(log) = &mut self.debug_log else {
            return;
        };
        let value = serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_owned()));
        if let Err(e) = log.write(event, value) {
            tracing::warn!(error = %e, "cannot write debug log");
        }
    }

    fn complete(&mut self, c: wit::Completion) -> Result<(), CompleteError> {
        if self.completion.is_some() {
            return Err(CompleteError::AlreadyCompleted);
        }
        let final_messages =
            split_messages(&c.final_messages, "final-messages").map_err(CompleteError::Invalid)?;
        let extra_fields = match &c.extra_fields {
            Some(text) => parse_object(text, "extra-fields").map_err(CompleteError::Invalid)?,
            None => Map::new(),
        };
        if c.reward.is_some_and(|r| !r.is_finite()) {
            return Err(CompleteError::Invalid(
                "reward must be a finite number".into(),
            ));
        }
        let status = match c.status {
            wit::RolloutStatus::Completed => RolloutStatus::Completed,
            wit::RolloutStatus::Error => RolloutStatus::Error,
        };
        let starts_with_request = final_messages.len() >= self.request_messages.len()
            && first_difference(self.request_messages.iter().map(|m| &**m), &final_messages)
                .is_none();
        if status == RolloutStatus::Completed && !starts_with_request {
            return Err(CompleteError::Invalid(
                "final-messages must start with the request's messages".into(),
            ));
        }
        let error_message = match status {
            RolloutStatus::Error => Some(
                c.error_message
                    .unwrap_or_else(|| "the agent reported an error".into()),
            ),
            RolloutStatus::Completed => None,
        };
        self.completion = Some(Completion {
            status,
            final_messages: final_messages.into_iter().map(RawValue::to_owned).collect(),
            finish_reason: c.finish_reason,
            error_message,
            reward: c.reward,
            extra_fields,
            num_tool_calls: c.tool_metrics.num_tool_calls.into(),
            tool_latency_ms: c.tool_metrics.tool_latency_ms.max(0.0),
            at: Instant::now(),
        });
        Ok(())
    }
}

fn chat_error(e: TrainerError) -> ChatError {
    match e {
        TrainerError::Transport(m) => ChatError::Transport(m),
        TrainerError::Timeout(m) => ChatError::Timeout(m),
        TrainerError::Rejected { status, body } => {
            ChatError::TrainerRejected(HttpError { status, body })
        }
        TrainerError::RateLimited { body, .. } => {
            ChatError::TrainerRejected(HttpError { status: 429, body })
        }
        TrainerError::Failed { status, body } => {
            ChatError::TrainerFailed(HttpError { status, body })
        }
        TrainerError::BadResponse(m) => ChatError::BadResponse(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message_texts;
    use serde_json::json;

    fn completion(final_messages: &str) -> wit::Completion {
        wit::Completion {
            status: wit::RolloutStatus::Completed,
            final_messages: final_messages.into(),
            finish_reason: "stop".into(),
            error_message: None,
            reward: Some(1.0),
            tool_metrics: wit::ToolMetrics {
                num_tool_calls: 0,
                tool_latency_ms: 0.0,
            },
            extra_fields: None,
        }
    }

    #[test]
    fn completed_final_messages_must_start_with_the_request() {
        let mut host = RolloutHost::detached("t");
        host.request_messages = message_texts(&[json!({"role": "user", "content": "2 + 3?"})]);
        // Not the request's first message: refused.
        let other = r#"[{"role":"user","content":"2 + 4?"},{"role":"assistant","content":"6"}]"#;
        assert!(matches!(
            host.complete(completion(other)),
            Err(CompleteError::Invalid(m)) if m.contains("must start with the request's messages")
        ));
        assert!(host.completion.is_none());
        // The same message written differently, then the answer: accepted,
        // and the final messages go on as the guest wrote them.
        let ok = r#"[{ "role": "user", "content": "2 + 3?" }, {"role":"assistant","content":"5"}]"#;
        host.complete(completion(ok)).unwrap();
        let done = host.completion.as_ref().unwrap();
        assert_eq!(
            done.final_messages[0].get(),
            r#"{ "role": "user", "content": "2 + 3?" }"#
        );
        assert_eq!(done.final_messages.len(), 2);
    }
}
