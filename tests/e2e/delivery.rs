//! Callbacks that survive a trainer away for a minute and a server killed
//! with `kill -9` (`--state-dir`): every rollout gets exactly one.

use crate::harness::*;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Callbacks received per rollout id.
fn callbacks_per_id(trainer: &Trainer) -> HashMap<String, usize> {
    let mut per_id = HashMap::new();
    for call in trainer.completions() {
        let id = call.body["rollout_id"].as_str().unwrap().to_owned();
        *per_id.entry(id).or_insert(0) += 1;
    }
    per_id
}

/// Waits until `n` distinct rollouts have called back, then a little more
/// for any second callback.
async fn wait_for_all(trainer: &Trainer, n: usize, timeout: Duration) -> HashMap<String, usize> {
    let deadline = Instant::now() + timeout;
    while callbacks_per_id(trainer).len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} rollouts called back",
            callbacks_per_id(trainer).len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    callbacks_per_id(trainer)
}

/// The API key of the trainer-away test's server (/metrics needs one).
const KEY: &str = "k3y";

async fn metric(server: &Server, name: &str) -> f64 {
    let text = client()
        .get(format!("{}/metrics", server.url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics: {text}"))
}

/// The trainer goes away for 60 s while 1,000 rollouts are sent: the
/// callbacks it could not take are delivered when it is back, each once.
#[tokio::test(flavor = "multi_thread")]
async fn a_trainer_away_for_a_minute_gets_every_callback_once() {
    let trainer = Trainer::calculator("add", 5.0, 3.0, "8").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let server = Server::start(
        "calc",
        &[
            "--state-dir",
            state.to_str().unwrap(),
            "--retry-max-delay",
            "1",
            "--api-key",
            KEY,
        ],
    );
    let total = 1000;
    let sender = {
        let (url, trainer) = (server.url.clone(), trainer.clone());
        tokio::spawn(async move {
            for i in 0..total {
                let response = client()
                    .post(format!("{url}/v1/rollout/init"))
                    .bearer_auth(KEY)
                    .json(&init_body(&format!("away-{i}"), &trainer))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202, "away-{i}");
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    // The first rollouts complete; then the trainer is gone for a minute
    // while inits keep coming.
    trainer.wait_completions(100, Duration::from_secs(60)).await;
    trainer.go_away().await;
    let away = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let pending = metric(&server, "rollout_host_callbacks_pending").await;
    assert!(pending > 100.0, "{pending} callbacks pending");
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(away.elapsed())).await;
    trainer.come_back().await;
    sender.await.unwrap();

    let per_id = wait_for_all(&trainer, total, Duration::from_secs(60)).await;
    let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "more than one callback: {twice:?}");
    assert_eq!(per_id.len(), total);
    assert_eq!(metric(&server, "rollout_host_callbacks_pending").await, 0.0);
    let log = server.log();
    assert!(
        log.contains("completion callback delivered after all"),
        "{log}"
    );
}

/// `kill -9` with 500 rollouts in flight; a restart on the same
/// `--state-dir` sends each its one ERROR callback, answers a duplicate
/// init with its first answer, and runs new rollouts as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_server_calls_back_every_rollout_it_lost_once() {
    // The first trainer's LLM never answers in time: the 500 stay in flight.
    let stuck = Trainer::start_with(
        calculator_script("add", 5.0, 3.0, "8"),
        200,
        Duration::from_secs(3600),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    let server = Server::start("calc", &["--state-dir", state_arg]);
    let mut answers: HashMap<String, Value> = HashMap::new();
    for i in 0..500 {
        let id = format!("lost-{i}");
        let (status, answer) = server.init(&init_body(&id, &stuck)).await;
        assert_eq!(status, 202, "{answer}");
        answers.insert(id, answer);
    }
    let (_, health) = server.get("/health", None).await;
    assert_eq!(health["active_rollouts"], 500, "{health}");
    // Drop kills the process with SIGKILL.
    drop(server);
    assert!(stuck.completions().is_empty());

    let server = Server::start("calc", &["--state-dir", state_arg]);
    let per_id = wait_for_all(&stuck, 500, Duration::from_secs(60)).await;
    assert_eq!(per_id.len(), 500);
    assert!(per_id.values().all(|n| *n == 1), "{per_id:?}");
    for call in stuck.completions() {
        assert_eq!(call.body["status"], "ERROR");
        assert_eq!(
            call.body["error_message"],
            "rollout-host restarted: the rollout was lost"
        );
        assert_eq!(
            call.body["extra_fields"]["rollout_host"]["deployment"],
            "default"
        );
    }
    assert!(
        server.log().contains("500 rollouts were lost"),
        "{}",
        server.log()
    );
    // A duplicate init gets the first answer; its status is error.
    let (status, again) = server.init(&init_body("lost-7", &stuck)).await;
    assert_eq!((status, &again), (202, &answers["lost-7"]));
    let (_, status) = server.get("/v1/rollout/lost-7", None).await;
    assert_eq!(status["status"], "error");

    // New rollouts run as usual, and nothing is left for a next restart.
    let trainer = Trainer::calculator("add", 5.0, 3.0, "8").await;
    for i in 0..20 {
        assert_eq!(
            server
                .init(&init_body(&format!("new-{i}"), &trainer))
                .await
                .0,
            202
        );
    }
    let per_id = wait_for_all(&trainer, 20, Duration::from_secs(30)).await;
    assert!(per_id.values().all(|n| *n == 1));
    for call in trainer.completions() {
        assert_eq!(call.body["status"], "COMPLETED", "{}", call.body);
    }
    let mut server = server;
    assert!(server.terminate().success());
    drop(server);
    let server = Server::start("calc", &["--state-dir", state_arg]);
    assert!(!server.log().contains("were lost"), "{}", server.log());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stuck.completions().len(), 500);
    assert_eq!(trainer.completions().len(), 20);
}
