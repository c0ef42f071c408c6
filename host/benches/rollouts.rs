//! End-to-end benchmark: the real `rollout-host` release binary serving
//! `calc.wasm` (or any calculator plugin, `--plugin PATH`: the Python and JS
//! ones), driven by a scripted trainer in this process.
//!
//! ```text
//! cargo bench --bench rollouts -- [--plugin PATH] [--against-reference]
//!     [--rollouts N] [--concurrency C]
//!     [--trainer-latency-ms L] [--tool-turns T] [--logprobs-tokens K]
//!     [--warmup W] [--init-parallelism P] [--sample-every-s S]
//!     [--idle-after-s I] [--replicas N] [-- HOST ARGS...]
//! ```
//!
//! Prints throughput, init and end-to-end latency percentiles, the host's CPU
//! time per rollout (from its own /proc accounting over the measured run), its
//! peak RSS and RSS per in-flight rollout, and the error count. Inits go out
//! as a trainer sends them: all of a step's at once (`--init-parallelism`
//! bounds them when set); a 429 is retried after its Retry-After, as a
//! trainer does, and counted. `--sample-every-s` prints the host's RSS and
//! kept records over a long run (a soak), with the bytes each kept record
//! costs; `--idle-after-s` waits idle after the run and prints the RSS
//! then (memory given back after a burst). `ROLLOUT_BENCH_HOST=PATH` runs
//! another build of the host, to compare builds in alternating runs.
//! `--against-reference` then runs the same against the Python reference
//! server (`osmosis serve` with the calculator agent of `bench/reference/`,
//! installed there on first use) and prints the ratios. `--replicas N`
//! serves through N hosts sharing a `redis-server` (`--redis`) behind
//! `haproxy` (round robin), all on this machine, and adds each process's
//! CPU per rollout (the hosts' line is then the first replica's).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, oneshot};

mod common;
use common::build_calc;

struct Options {
    rollouts: usize,
    concurrency: usize,
    trainer_latency: Duration,
    tool_turns: usize,
    /// Tokens of logprobs in each chat answer (what a vLLM trainer sends
    /// with `logprobs: true`); 0 sends none.
    logprobs_tokens: usize,
    warmup: usize,
    /// Most init requests in flight at once; `None`: all of them.
    init_parallelism: Option<usize>,
    /// Print RSS and records every this often (0: never).
    sample_every: Duration,
    /// Stay idle this long after the run, then read the RSS.
    idle_after: Duration,
    host_args: Vec<String>,
    /// The plugin served (default: the Rust calculator, built here).
    plugin: Option<std::path::PathBuf>,
    /// Serve through this many replicas behind haproxy (0: one host, direct).
    replicas: usize,
    /// Then run the same against the reference server (`osmosis serve`
    /// with the calculator, `bench/reference/serve.sh`).
    against_reference: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        rollouts: 20_000,
        concurrency: 64,
        trainer_latency: Duration::ZERO,
        tool_turns: 1,
        logprobs_tokens: 0,
        warmup: 1_000,
        init_parallelism: None,
        sample_every: Duration::ZERO,
        idle_after: Duration::ZERO,
        host_args: Vec::new(),
        plugin: None,
        against_reference: false,
        replicas: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<usize, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} takes a whole number"))
        };
        match arg.as_str() {
            "--rollouts" => o.rollouts = value("--rollouts")?,
            "--concurrency" => o.concurrency = value("--concurrency")?.max(1),
            "--trainer-latency-ms" => {
                o.trainer_latency = Duration::from_millis(value("--trainer-latency-ms")? as u64)
            }
            "--tool-turns" => o.tool_turns = value("--tool-turns")?,
            "--logprobs-tokens" => o.logprobs_tokens = value("--logprobs-tokens")?,
            "--warmup" => o.warmup = value("--warmup")?,
            "--init-parallelism" => o.init_parallelism = Some(value("--init-parallelism")?.max(1)),
            "--sample-every-s" => {
                o.sample_every = Duration::from_secs(value("--sample-every-s")? as u64)
            }
            "--idle-after-s" => o.idle_after = Duration::from_secs(value("--idle-after-s")? as u64),
            "--plugin" => {
                o.plugin = Some(args.next().ok_or("--plugin needs a path")?.into());
            }
            "--against-reference" => o.against_reference = true,
            "--replicas" => o.replicas = value("--replicas")?,
            "--bench" => {} // passed by `cargo bench`
            // `cargo bench` appends `--bench`, after ours too.
            "--" => o.host_args.extend(args.by_ref().filter(|a| a != "--bench")),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

/// The scripted trainer: a tool call per turn until `tool_turns`, then the
/// final answer; callbacks are handed to whoever waits for that rollout.
/// It does as little as a trainer can (it shares the CPUs with the host):
/// its answers are encoded once, and it reads only the fields it needs.
struct Trainer {
    latency: Duration,
    /// The answer after `i` tool turns, for i in 0..=tool_turns.
    replies: Vec<Bytes>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Callback>>>,
    /// Callbacks received.
    callbacks: AtomicUsize,
}

impl Trainer {
    fn new(latency: Duration, tool_turns: usize, logprobs_tokens: usize) -> Self {
        let token = |i: usize| {
            json!({"token": format!("tok{i}"), "logprob": -0.125 * (i % 7) as f64, "bytes": [116, 111, 107],
                   "top_logprobs": [{"token": "alt", "logprob": -2.5, "bytes": [97, 108, 116]}]})
        };
        let logprobs = (logprobs_tokens > 0)
            .then(|| json!({"content": (0..logprobs_tokens).map(token).collect::<Vec<_>>()}));
        let replies = (0..=tool_turns)
            .map(|turn| {
                let (message, finish) = if turn < tool_turns {
                    (
                        json!({"role": "assistant", "content": null, "tool_calls": [
                            {"id": format!("call_{turn}"), "type": "function",
                             "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}}]}),
                        "tool_calls",
                    )
                } else {
                    (
                        json!({"role": "assistant", "content": "The sum is #### 5"}),
                        "stop",
                    )
                };
                Bytes::from(
                    serde_json::to_vec(&json!({
                        "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
                        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": logprobs}],
                        "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}
                    }))
                    .unwrap(),
                )
            })
            .collect();
        Self {
            latency,
            replies,
            waiting: Mutex::default(),
            callbacks: AtomicUsize::new(0),
        }
    }
}

/// What the trainer reads of a chat request: each message's role.
#[derive(serde::Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow)]
    messages: Vec<Role<'a>>,
}

#[derive(serde::Deserialize)]
struct Role<'a> {
    #[serde(borrow)]
    role: std::borrow::Cow<'a, str>,
}

/// What the driver checks of a completion callback.
#[derive(serde::Deserialize)]
struct Callback {
    rollout_id: String,
    status: String,
    reward: Option<f64>,
    error_message: Option<String>,
}

async fn chat(State(t): State<Arc<Trainer>>, body: Bytes) -> (StatusCode, Bytes) {
    let Ok(request) = serde_json::from_slice::<ChatRequest>(&body) else {
        return (StatusCode::BAD_REQUEST, Bytes::from_static(b"{}"));
    };
    let turns_done = request.messages.iter().filter(|m| m.role == "tool").count();
    if !t.latency.is_zero() {
        tokio::time::sleep(t.latency).await;
    }
    let reply = &t.replies[turns_done.min(t.replies.len() - 1)];
    (StatusCode::OK, reply.clone())
}

async fn completed(State(t): State<Arc<Trainer>>, body: Bytes) -> StatusCode {
    let Ok(callback) = serde_json::from_slice::<Callback>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    t.callbacks.fetch_add(1, Ordering::Relaxed);
    if let Some(tx) = t.waiting.lock().unwrap().remove(&callback.rollout_id) {
        let _ = tx.send(callback);
    }
    StatusCode::OK
}

struct Host {
    child: Child,
    url: String,
    /// With `--replicas`: the other processes serving (the other hosts,
    /// Redis, haproxy), by role; stopped with this one.
    beside: Vec<(String, Host)>,
}

impl Host {
    /// A process serving beside the host (Redis, haproxy).
    fn process(child: Child) -> Host {
        Host {
            child,
            url: String::new(),
            beside: Vec::new(),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `--replicas N`: a `redis-server`, N hosts sharing it and `haproxy` in
/// front of them (round robin); the host's `url` is the balancer's.
async fn start_replicas(plugin: &Path, o: &Options) -> Host {
    let redis_port = free_port().to_string();
    let redis = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &redis_port,
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server (./test.sh installs it)");
    let mut beside = vec![("redis".to_owned(), Host::process(redis))];
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let mut hosts: Vec<Host> = Vec::new();
    for i in 1..=o.replicas {
        let mut args = o.host_args.clone();
        args.extend([
            "--redis".into(),
            redis_url.clone(),
            "--replica-id".into(),
            format!("r{i}"),
        ]);
        hosts.push(start_host_with(plugin, o, &args));
    }
    let port = free_port();
    let mut config = format!(
        "global\n  maxconn 9000\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 120s\n  \
         timeout server 120s\nfrontend rollouts\n  bind 127.0.0.1:{port}\n  default_backend replicas\n\
         backend replicas\n  balance roundrobin\n"
    );
    for (i, host) in hosts.iter().enumerate() {
        config.push_str(&format!(
            "  server r{} {}\n",
            i + 1,
            host.url.trim_start_matches("http://")
        ));
    }
    let file =
        std::env::temp_dir().join(format!("rollouts-bench-haproxy-{}.cfg", std::process::id()));
    std::fs::write(&file, config).expect("write haproxy.cfg");
    let mut haproxy = Command::new("haproxy")
        .arg("-f")
        .arg(&file)
        .arg("-db")
        .stdout(Stdio::null())
        .spawn()
        .expect("start haproxy (./test.sh installs it)");
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    while !client
        .get(format!("{url}/health"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if let Ok(Some(status)) = haproxy.try_wait() {
            eprintln!("rollouts bench: haproxy exited ({status}); its output is above");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut hosts = hosts.into_iter();
    let mut first = hosts.next().expect("--replicas is at least 1");
    for (i, host) in hosts.enumerate() {
        beside.push((format!("host r{}", i + 2), host));
    }
    beside.push(("haproxy".to_owned(), Host::process(haproxy)));
    first.beside = beside;
    first.url = url;
    first
}

fn start_host(plugin: &Path, o: &Options) -> Host {
    start_host_with(plugin, o, &o.host_args)
}

fn start_host_with(plugin: &Path, o: &Options, host_args: &[String]) -> Host {
    let max_concurrent = o.concurrency.max(100).to_string();
    let max_queued = o.concurrency.max(1000).to_string();
    // ROLLOUT_BENCH_HOST runs another build (to compare builds in turns).
    let binary = std::env::var_os("ROLLOUT_BENCH_HOST")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_rollout-host").into());
    let mut child = Command::new(binary)
        .arg("--plugin")
        .arg(plugin)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--max-concurrent",
            &max_concurrent,
        ])
        .args(["--max-queued", &max_queued])
        .args(host_args)
        .env("RUST_LOG", "warn,rollout_host::server=info")
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rollout-host");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("listening on http://") {
                let _ = tx.send(Ok(line[at + "listening on ".len()..].trim().to_owned()));
            } else {
                // RUST_LOG keeps this to warnings and start-up lines.
                eprintln!("host: {line}");
            }
        }
        let _ = tx.send(Err(()));
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(url)) => Host {
            child,
            url,
            beside: Vec::new(),
        },
        _ => {
            eprintln!("rollouts bench: rollout-host did not start (its output is above)");
            std::process::exit(1);
        }
    }
}

/// The reference server, `bench/reference/serve.sh PORT` (which installs
/// it on first use and execs it, so its pid is the server's), once its
/// /health answers.
async fn start_reference() -> Host {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/reference/serve.sh");
    let child = Command::new("bash")
        .arg(&script)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the reference server");
    let host = Host {
        child,
        url: format!("http://127.0.0.1:{port}"),
        beside: Vec::new(),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let health = client.get(format!("{}/health", host.url)).send().await;
        if health.is_ok_and(|r| r.status().is_success()) {
            return host;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "rollouts bench: the reference server did not answer /health ({})",
        script.display()
    );
    std::process::exit(1);
}

/// What /proc says of a process.
struct Usage {
    user: Duration,
    system: Duration,
    rss_kib: u64,
    peak_rss_kib: u64,
    /// Resident private pages (what the instances wrote, the host's heap).
    anon_kib: u64,
    /// Resident file and shared-memory pages: mostly the plugin's
    /// data-segment image (mapped from the compiled file, or a memfd),
    /// one copy in memory mapped copy-on-write into every instance and
    /// counted in RSS once per mapping.
    image_kib: u64,
}

fn process_usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of stat (utime, stime), counted after the command name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let ticks =
        |i: usize| Duration::from_nanos(fields[i].parse::<u64>().unwrap() * 1_000_000_000 / hz);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib = |key: &str| kib_field(&status, key);
    Usage {
        user: ticks(11),
        system: ticks(12),
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
        anon_kib: kib("RssAnon:"),
        image_kib: kib("RssFile:") + kib("RssShmem:"),
    }
}

/// A process's CPU time so far (user + system).
fn cpu(pid: u32) -> Duration {
    let usage = process_usage(pid);
    usage.user + usage.system
}

/// The process's proportional set size in KiB: each page counted once
/// however many times it is mapped (what its cgroup is charged).
fn process_pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_or(0, |text| kib_field(&text, "Pss:"))
}

/// The `Key:   N kB` line of a /proc file, in KiB (0 when absent).
fn kib_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What the RSS sampler saw at the highest RSS reading.
#[derive(Default, Clone, Copy)]
struct Peak {
    rss_kib: u64,
    anon_kib: u64,
    image_kib: u64,
    pss_kib: u64,
}

/// Samples a process's RSS every 50 ms on a thread of its own: the highest
/// reading, what it was made of, and the PSS then (read when the peak grows
/// by more than 1%: smaps_rollup walks every mapping).
struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Peak>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut peak = Peak::default();
                while !stop.load(Ordering::Relaxed) {
                    let u = process_usage(pid);
                    if u.rss_kib > peak.rss_kib {
                        let pss_kib = if u.rss_kib > peak.rss_kib + peak.rss_kib / 100 {
                            process_pss_kib(pid)
                        } else {
                            peak.pss_kib
                        };
                        peak = Peak {
                            rss_kib: u.rss_kib,
                            anon_kib: u.anon_kib,
                            image_kib: u.image_kib,
                            pss_kib,
                        };
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                peak
            }
        });
        Self { stop, thread }
    }

    fn stop(self) -> Peak {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// An init request's fields after `rollout_id` and `server_url`.
const INIT_FIELDS: &str = concat!(
    r#""messages":[{"role":"system","content":"You are a calculator."},"#,
    r#"{"role":"user","content":"What is 2 + 3?"}],"#,
    r#""completion_params":{"temperature":0.7,"max_tokens":256},"#,
    r#""metadata":{"ground_truth":"5"}"#
);

#[derive(Default)]
struct Run {
    wall: Duration,
    init: Vec<Duration>,
    end_to_end: Vec<Duration>,
    errors: usize,
    /// 429 answers (retried).
    refused: usize,
    first_error: Option<String>,
}

async fn drive(
    host_url: &str,
    trainer: &Arc<Trainer>,
    trainer_url: &str,
    prefix: &str,
    n: usize,
    o: &Options,
) -> Run {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(o.init_parallelism.unwrap_or(256))
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let init_slots = Arc::new(o.init_parallelism.map(Semaphore::new));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..o.concurrency.min(n.max(1)) {
        let (client, next, init_slots, trainer) = (
            client.clone(),
            next.clone(),
            init_slots.clone(),
            trainer.clone(),
        );
        let (init_url, trainer_url, prefix) = (
            format!("{host_url}/v1/rollout/init"),
            serde_json::to_string(trainer_url).unwrap(),
            prefix.to_owned(),
        );
        workers.push(tokio::spawn(async move {
            let mut run = Run::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return run;
                }
                let id = format!("{prefix}-{i}");
                let (tx, rx) = oneshot::channel();
                trainer.waiting.lock().unwrap().insert(id.clone(), tx);
                let body = format!(
                    r#"{{"rollout_id":{},"server_url":{trainer_url},{INIT_FIELDS}}}"#,
                    serde_json::to_string(&id).unwrap()
                );
                let t0 = Instant::now();
                let (status, sent) = loop {
                    let permit = match &*init_slots {
                        Some(slots) => Some(slots.acquire().await.unwrap()),
                        None => None,
                    };
                    let sent = client
                        .post(init_url.as_str())
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    drop(permit);
                    let status = sent.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
                    if status != 429 {
                        break (status, sent);
                    }
                    // Full: retry after Retry-After, as a trainer does.
                    run.refused += 1;
                    let wait = sent
                        .as_ref()
                        .ok()
                        .and_then(|r| r.headers().get("retry-after")?.to_str().ok()?.parse().ok())
                        .unwrap_or(1);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                };
                run.init.push(t0.elapsed());
                if status != 202 {
                    run.errors += 1;
                    run.first_error
                        .get_or_insert(format!("init answered {status}: {sent:?}"));
                    trainer.waiting.lock().unwrap().remove(&id);
                    continue;
                }
                match tokio::time::timeout(Duration::from_secs(120), rx).await {
                    Ok(Ok(done)) if done.status == "COMPLETED" && done.reward == Some(1.0) => {
                        run.end_to_end.push(t0.elapsed())
                    }
                    other => {
                        run.errors += 1;
                        let what = match other {
                            Ok(Ok(done)) => format!(
                                "{} with reward {:?}: {}",
                                done.status,
                                done.reward,
                                done.error_message.unwrap_or_default()
                            ),
                            Ok(Err(_)) => "no callback".to_owned(),
                            Err(_) => "no callback within 120 s".to_owned(),
                        };
                        run.first_error.get_or_insert(format!("{id}: {what}"));
                    }
                }
            }
        }));
    }
    let mut total = Run::default();
    for w in workers {
        let r = w.await.unwrap();
        total.init.extend(r.init);
        total.end_to_end.extend(r.end_to_end);
        total.errors += r.errors;
        total.refused += r.refused;
        total.first_error = total.first_error.or(r.first_error);
    }
    total.wall = started.elapsed();
    total.init.sort();
    total.end_to_end.sort();
    total
}

/// One reading of a long run.
struct Sample {
    at: Duration,
    callbacks: usize,
    rss_kib: u64,
    records: u64,
}

/// Reads the host's RSS and its kept records (/health) every `every` until
/// `stop`, printing each reading.
async fn sample(
    pid: u32,
    health_url: String,
    trainer: Arc<Trainer>,
    every: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Sample> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(every).await;
        let records = match client.get(&health_url).send().await {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|h| h["records"].as_u64())
                .unwrap_or(0),
            Err(_) => 0,
        };
        let s = Sample {
            at: started.elapsed(),
            callbacks: trainer.callbacks.load(Ordering::Relaxed),
            rss_kib: process_usage(pid).rss_kib,
            records,
        };
        println!(
            "  sample  {:>6.0} s  {:>9} callbacks  RSS {:>7.1} MiB  {:>8} records",
            s.at.as_secs_f64(),
            s.callbacks,
            s.rss_kib as f64 / 1024.0,
            s.records
        );
        samples.push(s);
    }
    samples
}

/// What the samples say once the records stopped growing: how flat RSS
/// stayed, and what a kept record costs (the RSS slope between the first
/// reading and the first at the cap, both under the same load).
fn summarize_soak(samples: &[Sample]) {
    let Some(most) = samples.iter().map(|s| s.records).max().filter(|m| *m > 0) else {
        return;
    };
    let capped: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.records * 100 >= most * 99)
        .collect();
    let (Some(start), Some(first), Some(low), Some(high)) = (
        samples.first(),
        capped.first(),
        capped.iter().map(|s| s.rss_kib).min(),
        capped.iter().map(|s| s.rss_kib).max(),
    ) else {
        return;
    };
    println!(
        "  records               {} kept once the cap was reached at {} callbacks; \
         RSS from then on {:.1}-{:.1} MiB ({:+.1}%)",
        first.records,
        first.callbacks,
        low as f64 / 1024.0,
        high as f64 / 1024.0,
        (high as f64 / low as f64 - 1.0) * 100.0
    );
    if first.records > start.records {
        println!(
            "  bytes per kept record {:.0} (RSS growth / records added, from {} to {} records)",
            first.rss_kib.saturating_sub(start.rss_kib) as f64 * 1024.0
                / (first.records - start.records) as f64,
            start.records,
            first.records
        );
    }
}

fn pct(sorted: &[Duration], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let i = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len()) - 1;
    let d = sorted[i];
    if d < Duration::from_millis(10) {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    }
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("rollouts bench: {e}");
            std::process::exit(2);
        }
    };
    let plugin = match &o.plugin {
        Some(path) => path.clone(),
        None => build_calc(),
    };
    println!("plugin {}", plugin.display());
    // The trainer and the driver each get a thread of their own, so the
    // driver's clock is not held up behind the trainer's request queue (in
    // production the trainer is another machine).
    let trainer_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("trainer")
        .enable_all()
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let trainer = Arc::new(Trainer::new(
        o.trainer_latency,
        o.tool_turns,
        o.logprobs_tokens,
    ));
    let trainer_url = trainer_runtime.block_on(async {
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/rollout/completed", post(completed))
            .with_state(trainer.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let trainer_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        trainer_url
    });
    // All of a step's inits at once take a connection each.
    rollout_host::runtime::capacity::raise_open_file_limit();
    let trainer_handle = trainer_runtime.handle().clone();
    runtime.block_on(async move {
        let host = if o.replicas > 0 {
            start_replicas(&plugin, &o).await
        } else {
            start_host(&plugin, &o)
        };
        let ours = measure(host, "rollout-host", "", &trainer, &trainer_url, &trainer_handle, &o).await;
        if o.against_reference {
            println!();
            let reference = measure(
                start_reference().await,
                "reference (osmosis serve)",
                "ref-",
                &trainer,
                &trainer_url,
                &trainer_handle,
                &o,
            )
            .await;
            println!(
                "\nrollout-host / reference: {:.1}x the throughput, {:.1}x less host CPU per rollout",
                ours.throughput / reference.throughput,
                reference.cpu_per_rollout / ours.cpu_per_rollout
            );
        }
    });
}

/// What one server's measured run gave.
struct Measured {
    throughput: f64,
    /// Microseconds of the server's CPU per rollout.
    cpu_per_rollout: f64,
}

/// Warms `host` up, drives the measured run (rollout ids start with
/// `prefix`), prints its figures under `label`.
async fn measure(
    host: Host,
    label: &str,
    prefix: &str,
    trainer: &Arc<Trainer>,
    trainer_url: &str,
    trainer_handle: &tokio::runtime::Handle,
    o: &Options,
) -> Measured {
    let pid = host.child.id();
    if o.warmup > 0 {
        let warm = drive(
            &host.url,
            trainer,
            trainer_url,
            &format!("{prefix}warm"),
            o.warmup,
            o,
        )
        .await;
        assert_eq!(warm.errors, 0, "warm-up failed: {:?}", warm.first_error);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = process_usage(pid);
    let beside_before: Vec<Duration> = host.beside.iter().map(|(_, b)| cpu(b.child.id())).collect();
    let bench_before = process_usage(std::process::id());
    let sampler = RssSampler::start(pid);
    let stop_samples = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let samples = (!o.sample_every.is_zero()).then(|| {
        trainer_handle.spawn(sample(
            pid,
            format!("{}/health", host.url),
            trainer.clone(),
            o.sample_every,
            stop_samples.clone(),
        ))
    });
    let run = drive(
        &host.url,
        trainer,
        trainer_url,
        &format!("{prefix}run"),
        o.rollouts,
        o,
    )
    .await;
    let after = process_usage(pid);
    let beside_cpu: Vec<(&str, Duration)> = host
        .beside
        .iter()
        .zip(beside_before)
        .map(|((role, b), before)| (role.as_str(), cpu(b.child.id()).saturating_sub(before)))
        .collect();
    let bench_after = process_usage(std::process::id());
    let sampled = sampler.stop();
    stop_samples.store(true, Ordering::Relaxed);
    let samples = match samples {
        Some(task) => task.await.unwrap_or_default(),
        None => Vec::new(),
    };

    let done = run.end_to_end.len();
    let per_rollout = |d: Duration| d.as_secs_f64() * 1e6 / o.rollouts.max(1) as f64;
    let (user, system) = (after.user - before.user, after.system - before.system);
    let in_flight = o.concurrency.min(o.rollouts).max(1);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let rss_peak = after.peak_rss_kib.max(sampled.rss_kib);
    println!(
        "{label} bench: {} rollouts, {} in flight, trainer latency {} ms, {} tool turn(s), {} tokens of logprobs; {} CPUs",
        o.rollouts,
        o.concurrency,
        o.trainer_latency.as_millis(),
        o.tool_turns,
        o.logprobs_tokens,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  throughput            {:.0} rollouts/s ({done} completed in {:.2} s)",
        done as f64 / run.wall.as_secs_f64(),
        run.wall.as_secs_f64()
    );
    println!(
        "  init latency          p50 {}  p99 {}",
        pct(&run.init, 50.0),
        pct(&run.init, 99.0)
    );
    println!(
        "  end-to-end latency    p50 {}  p99 {}",
        pct(&run.end_to_end, 50.0),
        pct(&run.end_to_end, 99.0)
    );
    println!(
        "  host CPU per rollout  {:.0} us (user {:.0}, system {:.0}; {:.2} s over the run)",
        per_rollout(user + system),
        per_rollout(user),
        per_rollout(system),
        (user + system).as_secs_f64()
    );
    if !beside_cpu.is_empty() {
        let hosts: Duration = beside_cpu
            .iter()
            .filter(|(role, _)| role.starts_with("host"))
            .map(|(_, d)| *d)
            .sum::<Duration>()
            + user
            + system;
        let each: Vec<String> = beside_cpu
            .iter()
            .map(|(role, d)| format!("{role} {:.0}", per_rollout(*d)))
            .collect();
        let all = hosts
            + beside_cpu
                .iter()
                .filter(|(role, _)| !role.starts_with("host"))
                .map(|(_, d)| *d)
                .sum::<Duration>();
        println!(
            "  replicas CPU per rollout: all hosts {:.0} us, everything serving {:.0} us (the line above is r1's; {})",
            per_rollout(hosts),
            per_rollout(all),
            each.join(", ")
        );
    }
    let bench_cpu = (bench_after.user + bench_after.system)
        .saturating_sub(bench_before.user + bench_before.system);
    println!(
        "  bench CPU per rollout {:.0} us (trainer, driver and RSS sampler, on the same CPUs)",
        per_rollout(bench_cpu)
    );
    println!(
        "  host RSS              peak {:.1} MiB, idle {:.1} MiB, {:.1} KiB per in-flight rollout",
        mib(rss_peak),
        mib(before.rss_kib),
        rss_peak.saturating_sub(before.rss_kib) as f64 / in_flight as f64
    );
    println!(
        "                        at the sampled peak: {:.1} MiB private + {:.1} MiB file/shared pages \
         (the plugin image: one copy in memory, counted in RSS once per instance); PSS {:.1} MiB",
        mib(sampled.anon_kib),
        mib(sampled.image_kib),
        mib(sampled.pss_kib)
    );
    summarize_soak(&samples);
    if run.refused > 0 {
        println!("  429s (retried)        {}", run.refused);
    }
    println!("  errors                {}", run.errors);
    if let Some(e) = &run.first_error {
        println!("  first error           {e}");
    }
    if !o.idle_after.is_zero() {
        let idle_started = Instant::now();
        while idle_started.elapsed() < o.idle_after {
            tokio::time::sleep(Duration::from_secs(10).min(o.idle_after)).await;
            println!(
                "  idle {:>4.0} s           RSS {:.1} MiB",
                idle_started.elapsed().as_secs_f64(),
                mib(process_usage(pid).rss_kib)
            );
        }
        let idle = process_usage(pid).rss_kib;
        println!(
            "  RSS after {} s idle    {:.1} MiB: {:+.0}% of the {:.1} MiB before the run",
            o.idle_after.as_secs(),
            mib(idle),
            (idle as f64 / before.rss_kib as f64 - 1.0) * 100.0,
            mib(before.rss_kib)
        );
    }
    drop(host);
    if run.errors > 0 {
        std::process::exit(1);
    }
    Measured {
        throughput: done as f64 / run.wall.as_secs_f64(),
        cpu_per_rollout: per_rollout(user + system),
    }
}
