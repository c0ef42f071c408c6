//! Hot swap: a new plugin file replaces the running plugin in place, on
//! `--reload` (file change) or `SIGHUP`, without dropping a rollout.

use crate::harness::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

async fn agent(server: &Server) -> Value {
    server.get("/health", None).await.1["agent_loop"].clone()
}

async fn wait_for_agent(server: &Server, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent(server).await != name {
        assert!(
            Instant::now() < deadline,
            "agent is not {name}:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_log(server: &Server, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in the log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After a plugin file that does not load: the failure is logged, the
/// running misbehave plugin stays, and a rollout `id` still completes on it.
async fn keeps_serving_after_a_failed_swap(server: &Server, trainer: &Trainer, id: &str) {
    wait_for_log(server, "plugin not swapped").await;
    assert!(server.log().contains("is not a WebAssembly component"));
    assert_eq!(agent(server).await, "misbehave");
    let (status, answer) = server.init(&misbehave_body(id, trainer, "echo")).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(trainer.single_completion(id).await["status"], "COMPLETED");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_plugin_file_is_swapped_in_without_dropping_rollouts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.wasm");
    deploy(&plugin("calc"), &path);
    // Each calculator rollout takes two 4 s chats: they are in flight
    // across the swap.
    let trainer = Trainer::start_with(
        calculator_script("add", 5.0, 3.0, "8"),
        200,
        Duration::from_secs(4),
    )
    .await;
    let server = Server::start_path(&path, &["--reload"]);
    assert_eq!(agent(&server).await, "calculator");
    for i in 0..4 {
        let (status, answer) = server.init(&init_body(&format!("old-{i}"), &trainer)).await;
        assert_eq!(status, 202, "{answer}");
    }

    deploy(&plugin("misbehave"), &path);
    wait_for_agent(&server, "misbehave").await;
    assert!(
        trainer.completions().is_empty(),
        "the swap must happen while the calculator rollouts run"
    );
    assert_eq!(
        server.get("/health", None).await.1["active_rollouts"],
        4,
        "the rollouts in flight are still running"
    );

    // New rollouts run the new plugin (misbehave's echo reports its chat).
    let (status, answer) = server
        .init(&misbehave_body("new-1", &trainer, "echo"))
        .await;
    assert_eq!(status, 202, "{answer}");
    let done = trainer.single_completion("new-1").await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["extra_fields"]["finish_reason"], "tool_calls");
    // The rollouts in flight finished on the calculator they started with.
    for i in 0..4 {
        let done = trainer.single_completion(&format!("old-{i}")).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
        assert_eq!(done["reward"], 1.0, "{done}");
    }
    assert_eq!(trainer.completions().len(), 5, "one callback per rollout");

    // A file that does not load is reported; the running plugin stays.
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm but not a component").unwrap();
    deploy(&bad, &path);
    keeps_serving_after_a_failed_swap(&server, &trainer, "new-2").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_plugin_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.wasm");
    deploy(&plugin("calc"), &path);
    let trainer = Trainer::calculator("add", 2.0, 2.0, "4").await;
    let server = Server::start_path(&path, &[]);

    // Without --reload a new file alone changes nothing.
    deploy(&plugin("misbehave"), &path);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(agent(&server).await, "calculator");
    hang_up(&server);
    wait_for_agent(&server, "misbehave").await;

    // A failed reload keeps the running plugin, and the server serving.
    std::fs::write(&path, b"not wasm at all").unwrap();
    hang_up(&server);
    keeps_serving_after_a_failed_swap(&server, &trainer, "after").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn swapping_under_load_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.wasm");
    deploy(&plugin("calc"), &path);
    // Both plugins run the calculator on a request without a mode, so every
    // rollout must complete with reward 1 whichever plugin it starts on.
    let trainer = Trainer::start_with(
        calculator_script("add", 5.0, 3.0, "8"),
        200,
        Duration::from_millis(20),
    )
    .await;
    let server = Arc::new(Server::start_path(&path, &[]));
    // Ten senders start rollouts until the last swap is done.
    let (sent, swapping) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(true)),
    );
    let senders: Vec<_> = (0..10)
        .map(|_| {
            let (server, url) = (server.clone(), trainer.url.clone());
            let (sent, swapping) = (sent.clone(), swapping.clone());
            tokio::spawn(async move {
                while swapping.load(Ordering::SeqCst) {
                    let i = sent.fetch_add(1, Ordering::SeqCst);
                    let body = json!({
                        "rollout_id": format!("load-{i}"),
                        "server_url": url,
                        "messages": [{"role": "user", "content": "What is 5 + 3?"}],
                        "completion_params": {},
                        "metadata": {"ground_truth": "8"}
                    });
                    // A full server answers 429; the trainer tries again.
                    loop {
                        let (status, answer) = server.init(&body).await;
                        if status == 202 {
                            break;
                        }
                        assert_eq!(status, 429, "load-{i}: {answer}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    for (n, (file, agent_name)) in [
        ("misbehave", "misbehave"),
        ("calc", "calculator"),
        ("misbehave", "misbehave"),
        ("calc", "calculator"),
    ]
    .into_iter()
    .enumerate()
    {
        deploy(&plugin(file), &path);
        hang_up(&server);
        wait_for_agent(&server, agent_name).await;
        assert_eq!(server.log().matches("plugin swapped").count(), n + 1);
    }
    swapping.store(false, Ordering::SeqCst);
    for s in senders {
        s.await.unwrap();
    }
    let rollouts = sent.load(Ordering::SeqCst);
    assert!(
        rollouts >= 100,
        "only {rollouts} rollouts overlapped the swaps"
    );

    let done = trainer
        .wait_completions(rollouts, Duration::from_secs(60))
        .await;
    let mut ids: Vec<String> = done
        .iter()
        .map(|c| {
            assert_eq!(c.body["status"], "COMPLETED", "{}", c.body);
            assert_eq!(c.body["reward"], 1.0, "{}", c.body);
            c.body["rollout_id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), rollouts, "one callback per rollout");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(trainer.completions().len(), rollouts, "no second callback");
}
