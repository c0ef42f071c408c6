//! Operations: `/metrics` (parsed as Prometheus text, every counter checked
//! against the test's own count), rollout status, and cancel by ids, by
//! prefix and all, for queued and running rollouts.

use crate::harness::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// `Authorization` of the metrics test's server (`--api-key`: /metrics is
/// served only with a key, like /platform/health).
const KEYED: Option<&str> = Some("Bearer k3y");

async fn post_cancel(server: &Server, path: &str, body: Value, auth: Option<&str>) -> (u16, Value) {
    let mut request = client().post(format!("{}{path}", server.url)).json(&body);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = request.send().await.expect("cancel");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

async fn cancel(server: &Server, body: Value, auth: Option<&str>) -> Value {
    let (status, answer) = post_cancel(server, "/v1/rollout/cancel", body, auth).await;
    assert_eq!(status, 200, "{answer}");
    answer["dispositions"].clone()
}

async fn status_of(server: &Server, id: &str, auth: Option<&str>) -> String {
    let (status, body) = server.get(&format!("/v1/rollout/{id}"), auth).await;
    assert_eq!(status, 200, "{body}");
    body["status"].as_str().unwrap().to_owned()
}

/// Waits until `id`'s status is `want`.
async fn wait_status(server: &Server, id: &str, want: &str, auth: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = status_of(server, id, auth).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{id}: {got}, expected {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The rollout's one callback, an ERROR saying it was cancelled, within
/// `within` of the cancel.
async fn cancelled_callback(trainer: &Trainer, id: &str, cancelled_at: Instant, within: Duration) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while trainer.completion_for(id).is_none() {
        assert!(Instant::now() < deadline, "no callback for {id}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = cancelled_at.elapsed();
    let done = trainer.single_completion(id).await;
    assert_eq!(done["status"], "ERROR", "{done}");
    assert!(
        done["error_message"]
            .as_str()
            .unwrap_or_default()
            .contains("the rollout was cancelled"),
        "{done}"
    );
    assert!(took < within, "{id}: callback {took:?} after the cancel");
}

/// Cancel by ids, by prefix and all, each for a running (spinning) and a
/// queued rollout: one ERROR callback each, the spinning guest stopped at
/// once, status `cancelled`; a finished or unknown id is told apart.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_queued_and_running_rollouts_with_one_callback_each() {
    let trainer = Trainer::calculator("add", 5.0, 3.0, "8").await;
    // One slot: the first spinner runs, the rest queue. The CPU budget
    // and deadline are far away: only the cancel can stop them.
    let server = Server::start(
        "misbehave",
        &["--max-concurrent", "1", "--cpu-budget", "600"],
    );
    let spin = |id: &str| misbehave_body(id, &trainer, "spin");

    // By ids.
    for id in ["ids-run", "ids-queued"] {
        assert_eq!(server.init(&spin(id)).await.0, 202);
    }
    wait_status(&server, "ids-run", "running", None).await;
    assert_eq!(status_of(&server, "ids-queued", None).await, "queued");
    assert_eq!(status_of(&server, "never-seen", None).await, "unknown");
    let at = Instant::now();
    let got = cancel(
        &server,
        json!({"ids": ["ids-run", "ids-queued", "never-seen"]}),
        None,
    )
    .await;
    assert_eq!(
        got,
        json!({"ids-run": "cancelled_running", "ids-queued": "cancelled_queued", "never-seen": "not_found"})
    );
    // The spinning guest yields every 10 ms epoch tick: the callback comes
    // at once (the bound is loose for a busy CI box).
    cancelled_callback(&trainer, "ids-run", at, Duration::from_millis(500)).await;
    cancelled_callback(&trainer, "ids-queued", at, Duration::from_millis(500)).await;
    for id in ["ids-run", "ids-queued"] {
        assert_eq!(status_of(&server, id, None).await, "cancelled");
    }
    let again = cancel(&server, json!({"ids": ["ids-run"]}), None).await;
    assert_eq!(again, json!({"ids-run": "already_finished"}));

    // By prefix: step-7-* go, other-* stays.
    for id in ["step-7-a", "step-7-b", "other-a"] {
        assert_eq!(server.init(&spin(id)).await.0, 202);
    }
    wait_status(&server, "step-7-a", "running", None).await;
    let at = Instant::now();
    let got = cancel(&server, json!({"prefix": "step-7-"}), None).await;
    assert_eq!(
        got,
        json!({"step-7-a": "cancelled_running", "step-7-b": "cancelled_queued"})
    );
    cancelled_callback(&trainer, "step-7-a", at, Duration::from_millis(500)).await;
    cancelled_callback(&trainer, "step-7-b", at, Duration::from_millis(500)).await;
    // other-a got the slot and runs.
    wait_status(&server, "other-a", "running", None).await;

    // All: the running one and one queued behind it.
    assert_eq!(server.init(&spin("other-b")).await.0, 202);
    assert_eq!(status_of(&server, "other-b", None).await, "queued");
    let at = Instant::now();
    let got = cancel(&server, json!({"all": true}), None).await;
    assert_eq!(
        got,
        json!({"other-a": "cancelled_running", "other-b": "cancelled_queued"})
    );
    cancelled_callback(&trainer, "other-a", at, Duration::from_millis(500)).await;
    cancelled_callback(&trainer, "other-b", at, Duration::from_millis(500)).await;

    // The server goes on: a new rollout runs to its completion, and its
    // status says so with its reward.
    assert_eq!(server.init(&init_body("after", &trainer)).await.0, 202);
    let done = trainer.single_completion("after").await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let (_, status) = server.get("/v1/rollout/after", None).await;
    assert_eq!(
        status,
        json!({"rollout_id": "after", "status": "completed", "reward": 1.0, "deployment": "default"})
    );
    assert_eq!(trainer.completions().len(), 7, "one callback per rollout");

    // Bad bodies are a 422 naming the shape.
    for bad in [
        json!({}),
        json!({"ids": ["a"], "all": true}),
        json!({"all": false}),
    ] {
        let (status, body) = post_cancel(&server, "/v1/rollout/cancel", bad, None).await;
        assert_eq!(status, 422, "{body}");
        assert!(body["detail"].as_str().unwrap().contains("exactly one of"));
    }
}

/// Status and cancel take the deployment's API key, like init.
#[tokio::test(flavor = "multi_thread")]
async fn status_and_cancel_need_the_api_key() {
    let server = Server::start("calc", &["--api-key", "k3y"]);
    let (status, _) = server.get("/v1/rollout/x", None).await;
    assert_eq!(status, 401);
    let (status, body) = server.get("/v1/rollout/x", Some("Bearer k3y")).await;
    assert_eq!((status, &body["status"]), (200, &json!("unknown")));
    let (status, _) = post_cancel(&server, "/v1/rollout/cancel", json!({"all": true}), None).await;
    assert_eq!(status, 401);
    // /metrics: the /platform/health rule (401 without the key, 404 on a
    // server without one).
    let (status, _) = server.get("/metrics", None).await;
    assert_eq!(status, 401);
    drop(server);
    let server = Server::start("calc", &[]);
    let (status, _) = server.get("/metrics", None).await;
    assert_eq!(status, 404);
}

/// One sample's value: a counter, gauge or untyped sample of `name` whose
/// labels include `labels`; 0 when there is none.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name}: not a single value: {other:?}"),
        })
        .collect();
    assert!(matching.len() <= 1, "{name} {labels:?}: {matching:?}");
    matching.first().copied().unwrap_or(0.0)
}

async fn scrape(server: &Server) -> prometheus_parse::Scrape {
    let response = client()
        .get(format!("{}/metrics", server.url))
        .header("authorization", KEYED.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses")
}

/// After a scripted mix (completed, errored by two limits, 429s, a cancel),
/// every counter of `/metrics` equals the test's own count.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_the_server_did() {
    let trainer = Trainer::calculator("add", 5.0, 3.0, "8").await;
    let server = Server::start(
        "misbehave",
        &[
            "--max-concurrent",
            "4",
            "--max-queued",
            "0",
            "--cpu-budget",
            "0.3",
            "--max-memory-mib",
            "32",
            "--api-key",
            "k3y",
        ],
    );
    // 6 completed (and one duplicate init of the first: a 202, not a new
    // rollout), 2 over the CPU budget, 2 over memory.
    // (Three at a time: the deployment holds four.)
    for batch in [["ok-0", "ok-1", "ok-2"], ["ok-3", "ok-4", "ok-5"]] {
        for id in batch {
            assert_eq!(
                server.init_with(&init_body(id, &trainer), KEYED).await.0,
                202
            );
        }
        for id in batch {
            assert_eq!(trainer.single_completion(id).await["status"], "COMPLETED");
        }
    }
    assert_eq!(
        server
            .init_with(&init_body("ok-0", &trainer), KEYED)
            .await
            .0,
        202
    );
    for (id, mode) in [
        ("cpu-1", "spin"),
        ("cpu-2", "spin"),
        ("mem-1", "alloc"),
        ("mem-2", "alloc"),
    ] {
        assert_eq!(
            server
                .init_with(&misbehave_body(id, &trainer, mode), KEYED)
                .await
                .0,
            202
        );
    }
    for id in ["cpu-1", "cpu-2", "mem-1", "mem-2"] {
        assert_eq!(trainer.single_completion(id).await["status"], "ERROR");
    }
    // 4 sleepers fill the deployment (4 running, 0 queued): 3 more inits
    // get 429; then one sleeper is cancelled.
    for i in 0..4 {
        let id = format!("sleep-{i}");
        assert_eq!(
            server
                .init_with(&misbehave_body(&id, &trainer, "sleep"), KEYED)
                .await
                .0,
            202
        );
    }
    let mut refused = 0;
    for i in 0..3 {
        let (status, _) = server
            .init_with(&init_body(&format!("full-{i}"), &trainer), KEYED)
            .await;
        assert_eq!(status, 429);
        refused += 1;
    }
    let metrics = scrape(&server).await;
    let d = ("deployment", "default");
    assert_eq!(sample(&metrics, "rollout_host_rollouts_running", &[d]), 4.0);
    assert_eq!(sample(&metrics, "rollout_host_rollouts_queued", &[d]), 0.0);
    assert_eq!(
        cancel(&server, json!({"ids": ["sleep-0"]}), KEYED).await,
        json!({"sleep-0": "cancelled_running"})
    );
    assert_eq!(
        trainer.single_completion("sleep-0").await["status"],
        "ERROR"
    );
    wait_status(&server, "sleep-0", "cancelled", KEYED).await;

    let metrics = scrape(&server).await;
    let count = |name: &str, labels: &[(&str, &str)]| sample(&metrics, name, labels);
    assert_eq!(count("rollout_host_rollouts_accepted_total", &[d]), 14.0);
    assert_eq!(count("rollout_host_rollouts_completed_total", &[d]), 6.0);
    for (cause, n) in [
        ("cpu", 2.0),
        ("memory", 2.0),
        ("cancelled", 1.0),
        ("trap", 0.0),
    ] {
        assert_eq!(
            count(
                "rollout_host_rollouts_errored_total",
                &[d, ("cause", cause)]
            ),
            n,
            "{cause}"
        );
    }
    assert_eq!(
        count("rollout_host_inits_total", &[d, ("code", "202")]),
        15.0
    );
    assert_eq!(
        count("rollout_host_inits_total", &[d, ("code", "429")]),
        f64::from(refused)
    );
    assert_eq!(count("rollout_host_rollouts_running", &[d]), 3.0);
    assert_eq!(
        count("rollout_host_callbacks_total", &[("outcome", "delivered")]),
        11.0
    );
    // Each completed rollout made two chat calls, each one attempt.
    assert_eq!(count("rollout_host_chat_duration_seconds_count", &[]), 12.0);
    assert_eq!(
        count(
            "rollout_host_trainer_attempts_total",
            &[("call", "chat"), ("outcome", "ok")]
        ),
        12.0
    );
    // Every ended rollout's guest CPU and memory was observed once.
    assert_eq!(count("rollout_host_guest_cpu_seconds_count", &[d]), 11.0);
    assert_eq!(
        count("rollout_host_guest_peak_memory_bytes_count", &[d]),
        11.0
    );
    // The two spinners used their 0.3 s budgets.
    let cpu = count("rollout_host_guest_cpu_seconds_sum", &[d]);
    assert!((0.6..5.0).contains(&cpu), "{cpu}");
    assert_eq!(
        count("rollout_host_init_duration_seconds_count", &[d]),
        14.0
    );
}
