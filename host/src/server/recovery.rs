//! Start-up with `--state-dir`: what a previous run left in the journal
//! gets its callback. A rollout that was accepted and never called back
//! (the server was killed while it ran) gets its one ERROR callback,
//! "rollout-host restarted: the rollout was lost"; a callback that was
//! waiting for redelivery is delivered. Until then, and for the record TTL
//! after, a duplicate init for such a rollout gets its first answer.

use super::App;
use crate::delivery::Callback;
use crate::idempotency::InitAnswer;
use crate::journal::Entry;
use crate::live::{Progress, Status};
use crate::protocol::{RolloutResponse, RolloutStatus};
use std::sync::Arc;

pub const LOST: &str = "rollout-host restarted: the rollout was lost";

pub fn recover(app: &Arc<App>, left: Vec<Entry>) {
    if left.is_empty() {
        return;
    }
    let (mut lost, mut pending) = (0, 0);
    let until = app.deliveries.deadline_from_now();
    for entry in left {
        let Ok(url) = reqwest::Url::parse(&entry.callback_url) else {
            tracing::error!(rollout_id = %entry.rollout_id, url = %entry.callback_url, "journal entry with a bad callback URL dropped");
            if let Some(journal) = app.deliveries.journal() {
                journal.remove(&entry.deployment, &entry.key);
            }
            continue;
        };
        let (body, ended, until) = match &entry.pending {
            Some(callback) => {
                pending += 1;
                (
                    callback.body.clone(),
                    status_of(&callback.body),
                    callback.until,
                )
            }
            None => {
                lost += 1;
                (
                    lost_callback(&entry),
                    Progress {
                        status: Status::Error,
                        reward: None,
                    },
                    until,
                )
            }
        };
        if let Some(deployment) = app.deployment(&entry.deployment) {
            deployment.idempotency.restore(
                &entry.key,
                &InitAnswer {
                    rollout_id: entry.rollout_id.as_str().into(),
                    fields: entry.answer_fields.clone(),
                },
                ended,
            );
        }
        app.deliveries.later(
            Callback {
                deployment: entry.deployment.as_str().into(),
                key: entry.key.as_str().into(),
                rollout_id: entry.rollout_id.as_str().into(),
                url,
                api_key: entry.api_key,
                body: body.into(),
            },
            until,
            true,
        );
    }
    tracing::warn!(
        lost,
        pending,
        "journal from the last run: {lost} rollouts were lost (each gets an ERROR callback), \
         {pending} callbacks wait for delivery"
    );
}

/// The ERROR callback of a rollout the server lost, naming the build it
/// was accepted on (as its init answer did).
fn lost_callback(entry: &Entry) -> String {
    let answer: serde_json::Value =
        serde_json::from_str(&format!("{{{}}}", entry.answer_fields)).unwrap_or_default();
    let mut extra_fields = serde_json::Map::new();
    extra_fields.insert(
        super::BUILD_KEY.to_owned(),
        answer[super::BUILD_KEY].clone(),
    );
    let response = RolloutResponse {
        rollout_id: entry.rollout_id.clone(),
        status: RolloutStatus::Error,
        final_messages: Vec::new(),
        finish_reason: "error".to_owned(),
        error_message: Some(LOST.to_owned()),
        reward: None,
        metrics: Default::default(),
        extra_fields,
    };
    // Strings, numbers and a JSON map always serialize.
    serde_json::to_string(&response).unwrap_or_default()
}

/// The status and reward a journaled callback body reports.
fn status_of(body: &str) -> Progress {
    let parsed: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    Progress {
        status: if parsed["status"] == "COMPLETED" {
            Status::Completed
        } else {
            Status::Error
        },
        reward: parsed["reward"].as_f64(),
    }
}
