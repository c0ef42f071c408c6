//! The sandbox and per-rollout limits: hostile plugins are stopped, get
//! exactly one ERROR callback naming the cause, and hurt nobody else.

use crate::harness::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn hostile(id: &str, trainer: &Trainer, mode: &str) -> Value {
    let mut body = init_body(id, trainer);
    body["metadata"] = json!({"mode": mode, "ground_truth": "2"});
    body
}

/// Inits `mode`, waits for its one callback; returns it and the time taken.
async fn run_hostile(
    server: &Server,
    trainer: &Trainer,
    id: &str,
    mode: &str,
) -> (Value, Duration) {
    let started = Instant::now();
    let (status, answer) = server.init(&hostile(id, trainer, mode)).await;
    assert_eq!(status, 202, "{mode}: {answer}");
    let done = trainer.single_completion(id).await;
    (done, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_limit_stops_the_guest_with_one_error_callback_naming_it() {
    let trainer = Trainer::calculator("add", 1.0, 1.0, "2").await;
    let logs = tempfile::tempdir().unwrap();
    let server = Server::start(
        "misbehave",
        &[
            "--cpu-budget",
            "1",
            // Well above the CPU budget: on a box shared with other tests
            // the spinning guest gets its 1 s of CPU within it.
            "--rollout-timeout",
            "5",
            "--chat-calls-per-turn",
            "2",
            "--log",
            logs.path().to_str().unwrap(),
        ],
    );
    // (mode, expected message, most time the callback may take)
    let cases = [
        ("spin", "exceeded its CPU budget of 1s", 5.0),
        ("alloc", "exceeded its memory limit of 256 MiB", 2.0),
        ("recurse", "exceeded its stack limit of 512 KiB", 2.0),
        (
            "big-log",
            "sent a log-event of 100.0 MiB, over the limit of 1 MiB",
            3.0,
        ),
        ("sleep", "exceeded its wall-clock deadline of 5s", 6.0),
        ("chat-forever", "exceeded its limit of 20 chat calls", 3.0),
    ];
    let label = build_label("misbehave", "misbehave");
    for (mode, expected, within) in cases {
        let id = format!("lim-{mode}");
        let (done, took) = run_hostile(&server, &trainer, &id, mode).await;
        assert_eq!(done["status"], "ERROR", "{mode}: {done}");
        assert_eq!(done["finish_reason"], "error");
        let msg = done["error_message"].as_str().unwrap();
        assert_eq!(msg, format!("plugin {label} {expected}"), "{mode}");
        if mode == "spin" {
            // The budget is CPU time: a busy box stretches the wall time
            // (up to the 5 s deadline), not the CPU the guest was given.
            let cpu = done["metrics"]["guest_cpu_ms"].as_f64().unwrap();
            assert!((1000.0..1500.0).contains(&cpu), "spin: {cpu} ms of CPU");
        } else {
            assert!(
                took.as_secs_f64() <= within,
                "{mode}: callback after {took:?}, limit + slack is {within}s"
            );
        }
        let events = std::fs::read_dir(logs.path())
            .unwrap()
            .map(|run| {
                std::fs::read_to_string(run.unwrap().path().join(format!("{id}.jsonl")))
                    .unwrap_or_default()
            })
            .collect::<String>();
        assert!(
            events.contains("\"event\":\"limit_exceeded\""),
            "{mode}: the debug log records the violation: {events}"
        );
    }
    assert_eq!(
        trainer.chats_for("lim-chat-forever").len(),
        20,
        "max_turns 10 x 2 calls, then stopped"
    );
    // Still serving.
    let (done, _) = run_hostile(&server, &trainer, "lim-after", "calc").await;
    assert_eq!(
        (done["status"].as_str(), done["reward"].as_f64()),
        (Some("COMPLETED"), Some(1.0))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn spinning_get_tools_fails_the_init_quickly() {
    let trainer = Trainer::calculator("add", 1.0, 1.0, "2").await;
    let server = Server::start("misbehave", &["--cpu-budget", "1"]);
    let started = Instant::now();
    let (status, answer) = server
        .init(&hostile("gt-spin", &trainer, "spin-in-get-tools"))
        .await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(
        answer["detail"],
        format!(
            "plugin {} exceeded its CPU budget of 1s in get-tools",
            build_label("misbehave", "misbehave")
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.get("/health", None).await.0, 200);
    let (done, _) = run_hostile(&server, &trainer, "gt-after", "calc").await;
    assert_eq!(done["status"], "COMPLETED");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_grants_no_ambient_capabilities() {
    let trainer = Trainer::calculator("add", 1.0, 1.0, "2").await;
    let server = Server::start("misbehave", &[]);
    let (done, _) = run_hostile(&server, &trainer, "escape", "escape").await;
    assert_eq!(done["status"], "COMPLETED", "trying is not a crash: {done}");
    let report = done["extra_fields"].as_object().unwrap();
    for attempt in [
        "read_file",
        "list_dir",
        "write_file",
        "env_var",
        "env_vars",
        "args",
        "tcp",
        "udp",
        "stdin",
    ] {
        let outcome = report[attempt].as_str().unwrap();
        assert!(outcome.starts_with("denied"), "{attempt}: {outcome}");
    }
    assert!(!std::path::Path::new("/tmp/escaped").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_host_calls_are_errors_inside_the_guest() {
    let trainer = Trainer::calculator("add", 1.0, 1.0, "2").await;
    let server = Server::start("misbehave", &[]);
    let (done, _) = run_hostile(&server, &trainer, "malformed", "malformed-host-calls").await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let report = &done["extra_fields"];
    assert!(
        report["chat"].as_str().unwrap().contains("InvalidRequest"),
        "{report}"
    );
    assert!(
        report["chat"].as_str().unwrap().contains("not valid JSON"),
        "{report}"
    );
    assert!(
        report["params"]
            .as_str()
            .unwrap()
            .contains("must be a JSON object"),
        "{report}"
    );
    assert!(
        report["complete"].as_str().unwrap().contains("Invalid"),
        "{report}"
    );
    assert!(
        trainer.chats_for("malformed").is_empty(),
        "nothing malformed reached the trainer"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_budget_excludes_time_waiting_for_the_trainer() {
    let trainer = Trainer::slow(Duration::from_millis(2500)).await;
    let server = Server::start("misbehave", &["--cpu-budget", "1"]);
    let (done, took) = run_hostile(&server, &trainer, "slow-chat", "calc").await;
    assert_eq!(
        done["status"], "COMPLETED",
        "blocked 5 s in chat with a 1 s CPU budget: {done}"
    );
    assert!(took >= Duration::from_secs(5));
    let metrics = &done["metrics"];
    assert!(
        metrics["guest_cpu_ms"].as_f64().unwrap() < 1000.0,
        "{metrics}"
    );
    assert!(metrics["guest_cpu_ms"].as_f64().unwrap() > 0.0, "{metrics}");
    assert!(
        metrics["guest_peak_memory_bytes"].as_u64().unwrap() >= 64 << 10,
        "{metrics}"
    );
}

/// RSS after the same small calculator batch and a pause, so that baseline
/// and final readings see the allocator in the same state.
async fn settled_rss(server: &Server, trainer: &Trainer, prefix: &str) -> u64 {
    calc_batch(server, trainer, prefix, 50).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.status_kib("VmRSS")
}

async fn calc_batch(server: &Server, trainer: &Trainer, prefix: &str, n: usize) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let body = hostile(&format!("{prefix}-{i}"), trainer, "calc");
        let url = server.url.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = client()
                .post(format!("{url}/v1/rollout/init"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            started
        }));
    }
    let mut starts = Vec::new();
    for t in tasks {
        starts.push(t.await.unwrap());
    }
    let mut latencies = Vec::new();
    for (i, started) in starts.into_iter().enumerate() {
        let id = format!("{prefix}-{i}");
        let done = loop {
            if let Some(done) = trainer.completion_for(&id) {
                break done;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{id} never completed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(
            (done["status"].as_str(), done["reward"].as_f64()),
            (Some("COMPLETED"), Some(1.0)),
            "{id}: {done}"
        );
        latencies.push(started.elapsed());
    }
    latencies.sort();
    latencies
}

const HOSTILE_MODES: [&str; 9] = [
    "spin",
    "spin",
    "alloc",
    "recurse",
    "trap",
    "big-log",
    "sleep",
    "chat-forever",
    "no-complete",
];

/// Starts one rollout of every hostile mode; returns their ids.
async fn start_hostile_suite(server: &Server, trainer: &Trainer, round: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for (i, mode) in HOSTILE_MODES.iter().enumerate() {
        let id = format!("h-{round}-{i}");
        assert_eq!(server.init(&hostile(&id, trainer, mode)).await.0, 202);
        ids.push(id);
    }
    ids
}

async fn expect_errors(trainer: &Trainer, ids: &[String]) {
    for (id, mode) in ids.iter().zip(HOSTILE_MODES) {
        let done = trainer.single_completion(id).await;
        assert_eq!(done["status"], "ERROR", "{mode}: {done}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_rollouts_do_not_disturb_the_others_or_leak() {
    let trainer = Trainer::calculator("add", 1.0, 1.0, "2").await;
    let server = Server::start(
        "misbehave",
        &[
            "--cpu-budget",
            "1",
            "--rollout-timeout",
            "3",
            "--max-concurrent",
            "300",
        ],
    );

    // Warm up (the first hostile round sets allocator high-water marks:
    // pooled fiber stacks, malloc arenas), then the latency baseline: 200
    // calculator rollouts alone.
    calc_batch(&server, &trainer, "warm", 50).await;
    let ids = start_hostile_suite(&server, &trainer, "warm").await;
    expect_errors(&trainer, &ids).await;
    let alone = calc_batch(&server, &trainer, "alone", 200).await;

    // The same 200 while every kind of hostile plugin runs.
    let ids = start_hostile_suite(&server, &trainer, "crowded").await;
    let health = tokio::spawn({
        let url = server.url.clone();
        async move {
            let mut worst = Duration::ZERO;
            for _ in 0..20 {
                let started = Instant::now();
                assert_eq!(
                    client()
                        .get(format!("{url}/health"))
                        .send()
                        .await
                        .unwrap()
                        .status(),
                    200
                );
                worst = worst.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            worst
        }
    });
    let crowded = calc_batch(&server, &trainer, "crowded", 200).await;
    let worst_health = health.await.unwrap();
    expect_errors(&trainer, &ids).await;

    let p50 = |l: &[Duration]| l[l.len() / 2];
    let p99 = |l: &[Duration]| l[l.len() * 99 / 100];
    eprintln!(
        "calc p50/p99 alone {:?}/{:?}, with hostile plugins {:?}/{:?}; worst /health {worst_health:?}",
        p50(&alone),
        p99(&alone),
        p50(&crowded),
        p99(&crowded)
    );
    assert!(
        worst_health < Duration::from_millis(50),
        "/health took {worst_health:?}"
    );
    // The plugins spinning for their whole 1 s CPU budget share one lane of
    // `cores - 1` slots: on a 2-core machine they take at most half the CPU,
    // so the calculator batch may take up to twice as long, plus a fixed
    // allowance for the hostile rollouts' own start and teardown (a 256 MiB
    // memory to decommit, a 100 MiB log-event to copy and refuse).
    assert!(
        p50(&crowded) <= p50(&alone) * 2 + Duration::from_millis(100),
        "p50 {:?} alone, {:?} beside hostile plugins",
        p50(&alone),
        p50(&crowded)
    );

    // No leak. The crowded round was the most rollouts in flight at once,
    // so the warm pool and the allocator's arenas are at their high-water
    // mark now: that is the RSS baseline. Three more hostile rounds must
    // leave memory where it was.
    let baseline_rss = settled_rss(&server, &trainer, "before").await;
    for round in ["again-1", "again-2", "again-3"] {
        let ids = start_hostile_suite(&server, &trainer, round).await;
        expect_errors(&trainer, &ids).await;
        eprintln!(
            "RSS after {round}: {} KiB",
            settled_rss(&server, &trainer, round).await
        );
    }
    let after = settled_rss(&server, &trainer, "after").await;
    eprintln!("RSS baseline {baseline_rss} KiB, after three more hostile rounds {after} KiB");
    assert!(
        after <= baseline_rss + baseline_rss / 10,
        "RSS {after} KiB vs baseline {baseline_rss} KiB"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_and_errors_name_their_cause_in_every_guest_language() {
    let trainer = Trainer::calculator("add", 1.0, 1.0, "2").await;
    for name in MISBEHAVERS {
        let server = Server::start(name, &["--cpu-budget", "1", "--max-memory-mib", "64"]);
        let agent = if name == "misbehave" {
            "misbehave"
        } else {
            name
        };
        let label = build_label(name, agent);
        // The Rust plugin's names for the same misbehaviour.
        let mode = |m: &'static str| match (name, m) {
            ("misbehave", "throw") => "error",
            _ => m,
        };
        for (what, expected) in [
            (
                "spin",
                format!("plugin {label} exceeded its CPU budget of 1s"),
            ),
            (
                "alloc",
                format!("plugin {label} exceeded its memory limit of 64 MiB"),
            ),
        ] {
            let id = format!("{name}-{what}");
            let (done, _) = run_hostile(&server, &trainer, &id, mode(what)).await;
            let msg = done["error_message"].as_str().unwrap_or_default();
            assert!(msg.starts_with(&expected), "{name} {what}: {done}");
        }
        let (done, _) =
            run_hostile(&server, &trainer, &format!("{name}-throw"), mode("throw")).await;
        let msg = done["error_message"].as_str().unwrap_or_default();
        assert!(
            msg.starts_with(&format!("plugin {label} run failed: ")),
            "{name}: {msg}"
        );
        assert!(msg.contains("deliberate error"), "{name}: {msg}");
        let (done, _) = run_hostile(&server, &trainer, &format!("{name}-recurse"), "recurse").await;
        assert_eq!(done["status"], "ERROR", "{name}: {done}");
        // The wasm stack, the interpreter's own recursion guard, or (a
        // Python told to recurse without bound) the memory its frames take.
        let msg = done["error_message"].as_str().unwrap_or_default();
        assert!(
            [
                "exceeded its stack limit of 512 KiB",
                "too much recursion",
                "RecursionError",
                "exceeded its memory limit of 64 MiB"
            ]
            .iter()
            .any(|cause| msg.contains(cause)),
            "{name}: {msg}"
        );
        // Its output reaches the log, tagged with the rollout.
        let id = format!("{name}-print");
        let _ = run_hostile(&server, &trainer, &id, mode("print")).await;
        let log = server.log();
        assert!(
            log.lines()
                .any(|l| l.contains(&id) && l.contains("misbehave")),
            "{name}: {log}"
        );
        // Still serving.
        let (done, _) = run_hostile(&server, &trainer, &format!("{name}-after"), "echo").await;
        assert_eq!(done["status"], "COMPLETED", "{name}: {done}");
    }
}

/// An interpreter's rollout writes all over its heap image; the next
/// rollout in the same pooled slot must still start from the component's
/// snapshot. Warm slots reset only the pages PAGEMAP_SCAN reports written
/// (all of them: `vendor/wasmtime-pagemap-scan-all-regions.patch`), so a
/// page missed would show here as module state an earlier rollout left, or
/// as a corrupt heap.
#[tokio::test(flavor = "multi_thread")]
async fn a_reused_slot_starts_each_rollout_from_the_snapshot() {
    let trainer = Trainer::calculator("add", 1.0, 1.0, "2").await;
    for name in ["misbehave-py", "misbehave-js"] {
        // One warm slot: sequential rollouts all reuse it; then four at a
        // time, some from the main pool.
        let server = Server::start(name, &["--warm-slots", "1"]);
        for i in 0..12 {
            let id = format!("{name}-alone-{i}");
            let (done, _) = run_hostile(&server, &trainer, &id, "remember").await;
            assert_eq!(done["status"], "COMPLETED", "{id}: {done}");
            assert_eq!(
                done["reward"], 1.0,
                "{id} saw an earlier rollout's state: {done}"
            );
        }
        for round in 0..4 {
            let ids: Vec<String> = (0..4)
                .map(|i| format!("{name}-crowd-{round}-{i}"))
                .collect();
            let bodies: Vec<Value> = ids
                .iter()
                .map(|id| hostile(id, &trainer, "remember"))
                .collect();
            let answers =
                futures_util::future::join_all(bodies.iter().map(|body| server.init(body))).await;
            for ((status, answer), id) in answers.iter().zip(&ids) {
                assert_eq!(*status, 202, "{id}: {answer}");
            }
            for id in &ids {
                let done = trainer.single_completion(id).await;
                assert_eq!(
                    done["reward"], 1.0,
                    "{id} saw an earlier rollout's state: {done}"
                );
            }
        }
    }
}
