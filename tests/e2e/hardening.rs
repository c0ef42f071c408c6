//! The server under the load of a real training run: a CPU budget that
//! counts CPU beside busy neighbours, a capacity it knows and keeps, records
//! and plugin output that stay bounded, and panics that are contained.

use crate::harness::*;
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn cpu_budget_counts_cpu_time_beside_busy_processes() {
    let trainer = Trainer::calculator("add", 1.0, 1.0, "2").await;
    let burn = |id: &str, iterations: u64| {
        let mut body = misbehave_body(id, &trainer, "burn");
        body["metadata"]["iterations"] = json!(iterations);
        body
    };
    // The work's CPU time on a quiet machine, scaled to ~300 ms.
    let calibration = 200_000_000;
    let server = Server::start("misbehave", &[]);
    assert_eq!(server.init(&burn("burn-alone", calibration)).await.0, 202);
    let done = trainer.single_completion("burn-alone").await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let alone_ms = done["metrics"]["guest_cpu_ms"].as_f64().unwrap();
    drop(server);
    let iterations = (calibration as f64 * 300.0 / alone_ms.max(1.0)) as u64;

    // Two processes at normal priority keep both cores busy; the plugin
    // needs ~30% of its 1 s budget.
    let server = Server::start("misbehave", &["--cpu-budget", "1"]);
    let _busy = BusyProcesses::start(2);
    let started = Instant::now();
    let ids: Vec<String> = (0..3).map(|i| format!("burn-busy-{i}")).collect();
    for id in &ids {
        assert_eq!(server.init(&burn(id, iterations)).await.0, 202);
    }
    let mut cpu = Vec::new();
    for id in &ids {
        let done = trainer.single_completion(id).await;
        assert_eq!(
            done["status"], "COMPLETED",
            "a plugin within its CPU budget completes beside busy processes: {done}"
        );
        cpu.push(done["metrics"]["guest_cpu_ms"].as_f64().unwrap());
    }
    let wall = started.elapsed();
    eprintln!(
        "alone {alone_ms:.0} ms for {calibration}; beside busy processes: {cpu:?} ms CPU in {wall:?}"
    );
    assert!(
        wall > Duration::from_secs(1),
        "the busy processes must slow the plugin past its budget in wall time \
         (else this test shows nothing): {wall:?}"
    );
    for ms in cpu {
        assert!((150.0..900.0).contains(&ms), "CPU charged: {ms} ms");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_flooding_stdout_logs_at_most_its_output_budget() {
    let trainer = Trainer::calculator("add", 1.0, 1.0, "2").await;
    let server = Server::start("misbehave", &[]);
    let before = server.log().len();
    let mut body = misbehave_body("flood", &trainer, "print-flood");
    body["metadata"]["mib"] = json!(40);
    assert_eq!(server.init(&body).await.0, 202);
    let done = trainer.single_completion("flood").await;
    assert_eq!(
        (done["status"].as_str(), done["reward"].as_f64()),
        (Some("COMPLETED"), Some(1.0)),
        "the rollout is unharmed: {done}"
    );
    let log = server.log();
    assert!(
        !log.contains('\u{1b}'),
        "stderr is a pipe here: plain text, no colour codes"
    );
    let grown = &log[before..];
    let budget = 64 << 10;
    assert!(
        grown.len() <= budget + 512,
        "40 MiB printed grew the log by {} bytes (budget {budget} + one line)",
        grown.len()
    );
    let note = grown
        .lines()
        .find(|l| l.contains("output truncated"))
        .unwrap_or_else(|| panic!("one line says what was dropped:\n{grown}"));
    let dropped: u64 = note
        .split("output truncated, ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{note}"));
    assert!(
        dropped > (40 << 20) - budget as u64 && dropped <= 40 << 20,
        "{note}"
    );
    // A second rollout has its own budget, and the server is fine.
    let (done, _) = run(&server, &trainer, "after-flood").await;
    assert_eq!(done["status"], "COMPLETED");
}

async fn run(server: &Server, trainer: &Trainer, id: &str) -> (Value, Duration) {
    let started = Instant::now();
    assert_eq!(server.init(&init_body(id, trainer)).await.0, 202);
    (trainer.single_completion(id).await, started.elapsed())
}

/// Debug builds of the host panic where `ROLLOUT_HOST_TEST_PANIC` says.
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread")]
async fn panics_free_their_place_and_still_answer() {
    let trainer = Trainer::calculator("add", 1.0, 1.0, "2").await;
    let label = build_label("calc", "calculator");
    for point in ["handler", "admission", "rollout"] {
        let mut command = Command::new(host_binary());
        command.env(
            rollout_host::fault::TEST_PANIC_VAR,
            format!("{point}:panic-"),
        );
        // One place in all: a leaked one would turn the next init into 429.
        let server = Server::start_command(
            &plugin("calc"),
            &["--max-concurrent", "1", "--max-queued", "0"],
            command,
        );
        for i in 0..3 {
            let id = format!("panic-{point}-{i}");
            let (status, answer) = server.init(&init_body(&id, &trainer)).await;
            if point == "rollout" {
                assert_eq!(status, 202, "{answer}");
                let done = trainer.single_completion(&id).await;
                assert_eq!(done["status"], "ERROR");
                assert_eq!(
                    done["error_message"],
                    format!(
                        "plugin {label}: rollout-host failed internally while running the rollout \
                         (test panic injected at rollout for rollout {id})"
                    )
                );
                assert_eq!(done["final_messages"].as_array().unwrap().len(), 2);
            } else {
                assert_eq!(status, 500, "{point}: {answer}");
                assert!(
                    answer["detail"]
                        .as_str()
                        .unwrap()
                        .contains("test panic injected"),
                    "{point}: a JSON body naming the panic: {answer}"
                );
            }
        }
        let (done, _) = run(&server, &trainer, &format!("ok-{point}")).await;
        assert_eq!(done["status"], "COMPLETED", "{point}: {done}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, health) = server.get("/health", None).await;
        assert_eq!(health["active_rollouts"], 0, "{point}: {health}");
    }
}

/// Limits the server's address space to `bytes` before it starts.
fn with_address_space(bytes: u64) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(host_binary());
    // SAFETY: the closure only calls setrlimit, which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

#[tokio::test(flavor = "multi_thread")]
async fn past_its_capacity_the_server_answers_429_never_500() {
    // 1 TiB of address space holds ~200 instances of 4 GiB each: the server
    // must find that out at start and keep to it.
    let server = Server::start_command(
        &plugin("calc"),
        &[
            "--max-concurrent",
            "1000",
            "--max-queued",
            "1000",
            "--warm-slots",
            "16",
        ],
        with_address_space(1 << 40),
    );
    let (_, health) = server.get("/health", None).await;
    let capacity = health["capacity"]["rollouts"].as_u64().unwrap() as usize;
    assert_eq!(health["capacity"]["bound"], "address space", "{health}");
    assert!((50..1000).contains(&capacity), "{health}");
    assert!(
        server.log().contains("more than this machine holds") && server.log().contains("ulimit -v"),
        "one line says so at start:\n{}",
        server.log()
    );

    // More inits than that, all at once, while the trainer takes its time.
    let trainer = Trainer::slow(Duration::from_secs(2)).await;
    let idle_mappings = server.mappings();
    let n = capacity + 100;
    let inits: Vec<_> = (0..n)
        .map(|i| {
            let body = init_body(&format!("cap-{i}"), &trainer).to_string();
            let url = format!("{}/v1/rollout/init", server.url);
            tokio::spawn(async move {
                let response = client()
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("init");
                let status = response.status().as_u16();
                let retry_after = response.headers().contains_key("retry-after");
                (status, retry_after)
            })
        })
        .collect();
    let mut accepted = 0;
    let mut refused = 0;
    for init in inits {
        match init.await.unwrap() {
            (202, _) => accepted += 1,
            (429, retry_after) => {
                assert!(retry_after, "429 carries Retry-After");
                refused += 1;
            }
            (status, _) => panic!("init answered {status}"),
        }
    }
    let busy_mappings = server.mappings();
    assert!(
        refused > 0 && accepted >= capacity.min(n) - 10,
        "{accepted} accepted, {refused} refused, capacity {capacity}"
    );
    assert!(
        busy_mappings <= idle_mappings + 4 * accepted + 64,
        "a rollout in flight adds at most 4 mappings (its stack's 2 exist from the start): \
         {idle_mappings} idle, {busy_mappings} with {accepted} in flight"
    );
    let done = trainer
        .wait_completions(accepted, Duration::from_secs(60))
        .await;
    assert!(
        done.iter().all(|c| c.body["status"] == "COMPLETED"),
        "every accepted rollout completes"
    );
}

/// The pages of the plugin's memory image mapped into the host (resident
/// file and shared-memory pages), in KiB.
fn image_pages_kib(server: &Server) -> u64 {
    server.status_kib("RssFile") + server.status_kib("RssShmem")
}

/// An interpreter's image is 9-13 MiB and its guest reads scattered pages of
/// it. Left to the kernel's fault-around, each read maps 16 pages, and each
/// instance in flight mapped ~6 MiB of the Python image (1,000 in flight:
/// 7.9 GiB of RSS); each now maps the pages its guest reads.
#[tokio::test(flavor = "multi_thread")]
async fn an_interpreter_instance_maps_only_the_image_pages_it_reads() {
    const IN_FLIGHT: usize = 100;
    for calc in ["calc-py", "calc-js"] {
        let server = Server::start(calc, &[]);
        let trainer = Trainer::slow(Duration::from_secs(4)).await;
        let idle = image_pages_kib(&server);
        for i in 0..IN_FLIGHT {
            let (status, _) = server
                .init(&init_body(&format!("{calc}-{i}"), &trainer))
                .await;
            assert_eq!(status, 202);
        }
        // Every instance has run its guest up to its first chat, which the
        // trainer holds for 4 s.
        let deadline = Instant::now() + Duration::from_secs(30);
        while trainer.chats().len() < IN_FLIGHT {
            assert!(Instant::now() < deadline, "{calc}: chats never came");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let per_instance = (image_pages_kib(&server).saturating_sub(idle)) / IN_FLIGHT as u64;
        eprintln!("{calc}: {per_instance} KiB of the image mapped per instance in flight");
        assert!(
            per_instance < 2048,
            "{calc}: each instance in flight maps {per_instance} KiB of the image (at most 2 MiB; \
             ~6 MiB for Python means the kernel faulted around: is userfaultfd refused here?)"
        );
        let done = trainer
            .wait_completions(IN_FLIGHT, Duration::from_secs(60))
            .await;
        assert!(done.iter().all(|c| c.body["status"] == "COMPLETED"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn records_past_the_cap_go_oldest_first() {
    let trainer = Trainer::calculator("add", 5.0, 3.0, "8").await;
    let server = Server::start("calc", &["--max-records", "2"]);
    let mut answers = Vec::new();
    for id in ["rec-1", "rec-2", "rec-3"] {
        let (status, answer) = server
            .init_raw(init_body(id, &trainer).to_string().into_bytes(), None)
            .await;
        assert_eq!(status, 202);
        answers.push(answer);
        trainer.single_completion(id).await;
    }
    // The host notes a rollout finished just after its callback is
    // delivered: wait until two records are left.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.get("/health", None).await.1["records"] != 2 {
        assert!(
            Instant::now() < deadline,
            "records never came down to the cap"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // rec-3's record is kept: the duplicate gets the same bytes, no run.
    let (status, again) = server
        .init_raw(init_body("rec-3", &trainer).to_string().into_bytes(), None)
        .await;
    assert_eq!((status, &again), (202, &answers[2]));
    // rec-1's went when rec-3 finished: its duplicate is a new rollout.
    let (status, _) = server
        .init_raw(init_body("rec-1", &trainer).to_string().into_bytes(), None)
        .await;
    assert_eq!(status, 202);
    trainer.wait_completions(4, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let count = |id: &str| {
        trainer
            .completions()
            .iter()
            .filter(|c| c.body["rollout_id"] == id)
            .count()
    };
    assert_eq!((count("rec-1"), count("rec-3")), (2, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_the_kernel_refuses_is_a_retryable_429() {
    let trainer = Trainer::calculator("add", 5.0, 3.0, "8").await;
    // On-demand instances map their memory at init, one by one.
    let server = Server::start("calc", &["--instance-allocator", "on-demand"]);
    let (done, _) = run(&server, &trainer, "room-1").await;
    assert_eq!(done["status"], "COMPLETED");
    // Leave the process 2 GiB more address space than it uses: enough for
    // its heap, not for an instance's 4 GiB reservation.
    let pid = server.pid() as libc::pid_t;
    let set_limit = |bytes: u64| {
        let limit = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: prlimit reads the struct we pass and writes nothing.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_AS, &limit, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    };
    let vm_kib = server.status_kib("VmSize");
    set_limit((vm_kib << 10) + (2 << 30));
    let response = client()
        .post(format!("{}/v1/rollout/init", server.url))
        .header("content-type", "application/json")
        .body(init_body("room-2", &trainer).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let answer: Value = response.json().await.unwrap();
    let detail = answer["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!(
            "rollout-host has no room for another instance of plugin {} now (",
            build_label("calc", "calculator")
        )),
        "{detail}"
    );
    // Room again: the trainer's retry goes through.
    set_limit(libc::RLIM_INFINITY);
    let (done, _) = run(&server, &trainer, "room-2").await;
    assert_eq!(done["status"], "COMPLETED");
}
