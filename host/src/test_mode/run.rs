//! Running rows: each row run is one rollout of the plugin, in the same
//! sandbox and under the same limits as when serving, with the LLM in place
//! of the trainer.

use super::dataset::Row;
use super::interactive::Stepper;
use super::llm::{CallSettings, LlmDialect, LlmTarget};
use super::report::{RunResult, TokenUsage};
use crate::debug_log::DebugLog;
use crate::protocol::{RolloutStatus, Tool, json_text, message_texts};
use crate::rollout::{self, Outcome};
use crate::runtime::{
    ChatWatch, HostCallLimits, Limits, Plugin, RolloutHost, TrainerLink, WitRolloutRequest,
};
use crate::trainer::{ChatCompletion, TrainerClient, TrainerError};
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// What every row run shares.
pub struct RunContext {
    pub plugin: Arc<Plugin>,
    pub client: TrainerClient,
    pub target: LlmTarget,
    pub chat_url: Arc<reqwest::Url>,
    /// The flags' sampling settings (`temperature`, `max_tokens`): the
    /// rollouts' `completion_params`.
    pub sampling: Map<String, Value>,
    pub max_turns: u32,
    pub limits: Limits,
    pub debug_log: Option<DebugLog>,
    pub pass_threshold: f64,
    pub runs_per_row: u32,
    pub calls: CallSettings,
}

/// The protocol's default `max_tokens_total`.
const MAX_TOKENS_TOTAL: u64 = 8192;

impl RunContext {
    /// `test-<row>`, or `test-<row>-<run>` when rows run more than once.
    pub fn rollout_id(&self, row: &Row, run: u32) -> String {
        match self.runs_per_row {
            1 => format!("test-{}", row.index),
            _ => format!("test-{}-{run}", row.index),
        }
    }

    /// Runs `row` once: `get-tools`, then the agent loop to its end.
    pub async fn run_row(&self, row: &Row, run: u32, stepper: Option<Arc<Stepper>>) -> Ran {
        let rollout_id = self.rollout_id(row, run);
        let messages = message_texts(&row.messages());
        let wit_request = WitRolloutRequest {
            rollout_id: rollout_id.clone(),
            messages: json_text(&messages),
            completion_params: json_text(&self.sampling),
            tool_server_url: None,
            max_turns: self.max_turns,
            max_tokens_total: MAX_TOKENS_TOTAL,
            metadata: json_text(&row.metadata()),
        };
        let dialect = Arc::new(LlmDialect::new(&self.target.model, &self.sampling));
        let watch = Arc::new(RowWatch {
            llm_error: Mutex::default(),
            stepper,
            tools: OnceLock::new(),
        });
        let link = TrainerLink {
            client: self.client.clone(),
            chat_url: self.chat_url.clone(),
            api_key: self.target.api_key.clone(),
            dialect: dialect.clone(),
            watch: Some(watch.clone()),
        };
        let host = RolloutHost::new(
            &rollout_id,
            link,
            messages,
            self.sampling.clone(),
            self.debug_log.as_ref().map(|log| log.rollout(&rollout_id)),
            HostCallLimits::new(&self.limits, self.max_turns),
        );
        let started = Instant::now();
        let (outcome, host) = match self.plugin.start(host, &wit_request).await {
            Ok((instance, tools)) => {
                dialect.set_tools(&tools);
                let _ = watch.tools.set(tools);
                let (outcome, host) =
                    rollout::run_to_end(instance, &wit_request, self.limits.wall_clock).await;
                (outcome, Some(host))
            }
            Err(e) => (Outcome::Failed(e), None),
        };
        let response = rollout::build_response(
            &rollout_id,
            &wit_request.messages,
            self.plugin.label(),
            host,
            outcome,
            started,
        );
        let llm_error = watch
            .llm_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let success = response.status == RolloutStatus::Completed;
        // A failure the LLM caused is told as the LLM's, with its hint.
        let error = match (&llm_error, success) {
            (_, true) => None,
            (Some(e), false) => Some(self.target.explain(e, &self.calls)),
            (None, false) => Some(
                response
                    .error_message
                    .unwrap_or_else(|| "the agent reported an error".into()),
            ),
        };
        let m = &response.metrics;
        let result = RunResult {
            row_index: row.index,
            success,
            error,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            token_usage: TokenUsage {
                prompt_tokens: m.prompt_tokens,
                completion_tokens: m.response_tokens,
                total_tokens: m.prompt_tokens + m.response_tokens,
                num_llm_calls: m.num_llm_calls,
            },
            reward: response.reward,
            finish_reason: response.finish_reason,
            run,
            rollout_id,
            passed: success && response.reward.is_some_and(|r| r >= self.pass_threshold),
            num_tool_calls: m.num_tool_calls,
            final_messages: response.final_messages,
        };
        Ran { result, llm_error }
    }
}

/// A finished row run and the LLM error that failed it, if one did.
pub struct Ran {
    pub result: RunResult,
    pub llm_error: Option<TrainerError>,
}

/// Sees one row run's chat calls: keeps the last LLM error (a later
/// success clears it) and lets the stepper pause before each call.
struct RowWatch {
    llm_error: Mutex<Option<TrainerError>>,
    stepper: Option<Arc<Stepper>>,
    tools: OnceLock<Vec<Tool>>,
}

#[async_trait::async_trait]
impl ChatWatch for RowWatch {
    async fn before(&self, messages: &str) {
        if let Some(stepper) = &self.stepper {
            stepper
                .before_call(messages, self.tools.get().map_or(&[], Vec::as_slice))
                .await;
        }
    }

    fn after(&self, result: Result<&ChatCompletion, &TrainerError>) {
        *self.llm_error.lock().unwrap_or_else(|p| p.into_inner()) = result.err().cloned();
        if let Some(stepper) = &self.stepper {
            stepper.after_call(result);
        }
    }
}
