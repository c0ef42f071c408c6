//! Scale-out: three `rollout-host` replicas sharing a real Redis
//! (`redis-server`), behind a real load balancer (`haproxy`, round robin),
//! all on loopback, driven through the balancer like a trainer would.
//! `./test.sh` installs both from Debian's packages.

use crate::harness::{Serial, Server, Trainer, calculator_script, client, init_body, plugin};
use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The response header naming the replica that answered.
const REPLICA: &str = "x-rollout-host-replica";

/// A port free on loopback now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A program `./test.sh` installs; the test says so when it is missing.
fn installed(program: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "{program} is not installed: ./test.sh installs it");
    Command::new(program)
}

/// A `redis-server` with an append-only file written at every write, in a
/// directory of its own (in memory: see [`memory_dir`]); stopped on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        let mut redis = Redis {
            child: None,
            port: free_port(),
            dir: dir.to_owned(),
        };
        redis.run();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        let child = installed("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pings() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pings(&self) -> bool {
        let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut answer = [0u8; 7];
        tcp.write_all(b"PING\r\n").is_ok()
            && tcp.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    /// SIGTERM (Redis writes its file and exits) and wait.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A directory in memory (tmpfs) where the machine has one. Redis's file
/// there outlives the Redis process (what the restart test needs) but not
/// the machine, and no other test's disk writes can stall Redis: with its
/// file on a disk that another process kept busy with `fsync`s, every
/// Redis answer waited behind them, `/health` was slow and the balancer
/// took a replica out of rotation within 2 s.
fn memory_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    dir.expect("tempdir")
}

/// Redis, `n` replicas named r1..rN and haproxy in front of them.
struct Replicas {
    hosts: Vec<Server>,
    redis: Redis,
    balancer: Child,
    /// The balancer's address.
    url: String,
    _dir: tempfile::TempDir,
    _serial: Serial,
}

impl Replicas {
    async fn start(n: usize, args: &[&str]) -> Replicas {
        Self::start_serving(&plugin("calc"), n, args).await
    }

    async fn start_serving(agent: &Path, n: usize, args: &[&str]) -> Replicas {
        let serial = Serial::acquire();
        let dir = memory_dir();
        let redis = Redis::start(dir.path());
        let redis_url = redis.url();
        let hosts: Vec<Server> = (1..=n)
            .map(|i| {
                let replica = format!("r{i}");
                let mut all = vec!["--redis", &redis_url, "--replica-id", &replica];
                all.extend_from_slice(args);
                Server::start_beside(agent, &all, &serial)
            })
            .collect();
        let port = free_port();
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, haproxy_config(port, &hosts)).expect("write haproxy.cfg");
        let balancer = installed("haproxy")
            .arg("-f")
            .arg(&config)
            .arg("-db")
            .stdout(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let replicas = Replicas {
            hosts,
            redis,
            balancer,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
            _serial: serial,
        };
        // Up when every replica answers through the balancer.
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 1..=n {
            let name = format!("r{i}");
            loop {
                let answer = client()
                    .get(format!("{}/health", replicas.url))
                    .header("x-replica", &name)
                    .send()
                    .await;
                if let Ok(answer) = answer
                    && answer.status() == 200
                    && answer.headers()[REPLICA] == name.as_str()
                {
                    break;
                }
                assert!(Instant::now() < deadline, "{name} is not up behind haproxy");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        replicas
    }

    /// `/health` of the default deployment, through the balancer.
    async fn health(&self) -> Value {
        let answer = client()
            .get(format!("{}/health", self.url))
            .send()
            .await
            .expect("GET /health");
        assert_eq!(answer.status(), 200);
        answer.json().await.expect("JSON")
    }

    /// `GET path` at replica `replica`, through the balancer.
    async fn get_at(&self, replica: &str, path: &str) -> Value {
        let answer = client()
            .get(format!("{}{path}", self.url))
            .header("x-replica", replica)
            .send()
            .await
            .expect("GET");
        assert_eq!(answer.headers()[REPLICA], replica);
        answer.json().await.expect("JSON")
    }

    /// `POST /v1/rollout/cancel` with `body` at replica `replica`.
    async fn cancel_at(&self, replica: &str, body: Value) -> Value {
        let answer = client()
            .post(format!("{}/v1/rollout/cancel", self.url))
            .header("x-replica", replica)
            .json(&body)
            .send()
            .await
            .expect("POST cancel");
        assert_eq!(answer.status(), 200);
        answer.json().await.expect("JSON")
    }

    /// A rollout's status as replica `replica` tells it.
    async fn status_at(&self, replica: &str, rollout_id: &str) -> Value {
        self.get_at(replica, &format!("/v1/rollout/{rollout_id}"))
            .await
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        let _ = self.balancer.kill();
        let _ = self.balancer.wait();
    }
}

/// Round robin over the replicas, health-checked on `/health` (a check
/// answered within 1 s passes, as a Kubernetes probe's default; three
/// failed in a row take a replica out); a request
/// with `x-replica: rN` goes to rN while it is up (so a test can send a
/// duplicate to another replica than the first). A connection refused
/// (a replica stopping) is retried on another replica, as a production
/// haproxy is set up.
fn haproxy_config(port: u16, hosts: &[Server]) -> String {
    let mut config = format!(
        "global\n  maxconn 4096\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 120s\n  timeout server 120s\n  \
         retries 3\n  option redispatch\n\
         frontend rollouts\n  bind 127.0.0.1:{port}\n  default_backend replicas\n\
         backend replicas\n  balance roundrobin\n  option httpchk GET /health\n  \
         timeout check 1s\n  default-server inter 200ms fall 3 rise 1\n"
    );
    for i in 1..=hosts.len() {
        config.push_str(&format!(
            "  use-server r{i} if {{ req.hdr(x-replica) -m str r{i} }}\n"
        ));
    }
    for (i, host) in hosts.iter().enumerate() {
        let addr = host.url.trim_start_matches("http://");
        config.push_str(&format!("  server r{} {addr} check\n", i + 1));
    }
    config
}

/// An init's answer: status, the replica that gave it, the body.
#[derive(Debug)]
struct Answer {
    status: u16,
    replica: String,
    body: Bytes,
}

/// The inits tried again, by why (status and detail, or the connection
/// error), so a test that expected none says what refused them.
#[derive(Default)]
struct Retries {
    why: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
}

impl Retries {
    fn add(&self, why: String) {
        let mut all = self.why.lock().expect("retries");
        *all.entry(why).or_default() += 1;
    }

    fn count(&self) -> usize {
        self.why.lock().expect("retries").values().sum()
    }
}

impl std::fmt::Debug for Retries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.why.lock().expect("retries").iter())
            .finish()
    }
}

/// Sends an init through the balancer (to replica `to` when given) as a
/// trainer does: again after a 503 or 429 (with the same key) or a failed
/// connection, until answered; `retries` counts the tries again.
async fn init_via(url: &str, body: &Value, to: Option<&str>, retries: &Retries) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut request = client()
            .post(format!("{url}/v1/rollout/init"))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(to) = to {
            request = request.header("x-replica", to);
        }
        let why = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let replica = response
                    .headers()
                    .get(REPLICA)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                match response.bytes().await {
                    Ok(body) if !matches!(status, 429 | 502 | 503) => {
                        return Answer {
                            status,
                            replica,
                            body,
                        };
                    }
                    Ok(body) => {
                        let detail = String::from_utf8_lossy(&body);
                        // Ids and counts vary; the kind of refusal does not.
                        let detail: String = detail
                            .chars()
                            .filter(|c| !c.is_ascii_digit())
                            .take(160)
                            .collect();
                        format!("{status} from '{replica}': {detail}")
                    }
                    Err(e) => format!("{status}, body cut: {e}"),
                }
            }
            Err(e) => format!("no answer: {e}"),
        };
        assert!(
            Instant::now() < deadline,
            "init {body} never answered: {why}"
        );
        retries.add(why);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each rollout's callbacks and chats, by rollout id.
fn by_rollout(trainer: &Trainer) -> (HashMap<String, Vec<Value>>, HashMap<String, usize>) {
    let mut callbacks: HashMap<String, Vec<Value>> = HashMap::new();
    for call in trainer.completions() {
        let id = call.body["rollout_id"].as_str().unwrap_or("").to_owned();
        callbacks.entry(id).or_default().push(call.body);
    }
    let mut chats: HashMap<String, usize> = HashMap::new();
    for call in trainer.chats() {
        let id = call.body["rollout_id"].as_str().unwrap_or("").to_owned();
        *chats.entry(id).or_default() += 1;
    }
    (callbacks, chats)
}

/// Waits for `n` callbacks, then a moment for any extra one.
async fn all_called_back(trainer: &Trainer, n: usize) {
    trainer.wait_completions(n, Duration::from_secs(180)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn replica(i: usize) -> String {
    format!("r{}", i % 3 + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_init_sent_to_two_replicas_runs_once_and_answers_the_same_bytes() {
    const ROLLOUTS: usize = 5_000;
    const IN_FLIGHT: usize = 256;
    let trainer = Trainer::calculator("add", 5.0, 3.0, "8").await;
    let replicas = Replicas::start(3, &[]).await;
    let retries = Arc::new(Retries::default());
    let started = Instant::now();
    let mut sends = Vec::with_capacity(ROLLOUTS);
    for i in 0..ROLLOUTS {
        // 256 rollouts in flight: one starts when one has called back. (A
        // trainer that started them all at once would meet each replica's
        // capacity, 1,100 running or queued, and be told 429: right, but
        // not this test's subject.)
        let called_back = trainer.called_back((i + 1).saturating_sub(IN_FLIGHT));
        tokio::time::timeout(Duration::from_secs(120), called_back)
            .await
            .unwrap_or_else(|_| panic!("rollout {i} waited 120 s for a callback"));
        let (url, trainer, retries) = (replicas.url.clone(), trainer.clone(), retries.clone());
        sends.push(tokio::spawn(async move {
            let body = init_body(&format!("twice-{i}"), &trainer);
            let (first, second) = (replica(i), replica(i + 1));
            let (a, b) = if i % 2 == 0 {
                tokio::join!(
                    init_via(&url, &body, Some(&first), &retries),
                    init_via(&url, &body, Some(&second), &retries)
                )
            } else {
                let a = init_via(&url, &body, Some(&first), &retries).await;
                (a, init_via(&url, &body, Some(&second), &retries).await)
            };
            assert_eq!((a.status, b.status), (202, 202), "{a:?} {b:?}");
            assert_eq!(
                (a.replica.as_str(), b.replica.as_str()),
                (&*first, &*second)
            );
            assert_eq!(a.body, b.body, "the duplicate's answer is byte-identical");
        }));
    }
    for send in sends {
        send.await.expect("init task");
    }
    all_called_back(&trainer, ROLLOUTS).await;
    eprintln!(
        "{ROLLOUTS} rollouts, each init twice, through 3 replicas: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (callbacks, chats) = by_rollout(&trainer);
    assert_eq!(callbacks.len(), ROLLOUTS);
    for i in 0..ROLLOUTS {
        let id = format!("twice-{i}");
        let mine = &callbacks[&id];
        assert_eq!(mine.len(), 1, "{id}: one callback: {mine:#?}");
        assert_eq!(mine[0]["status"], "COMPLETED", "{id}: {:#}", mine[0]);
        assert_eq!(mine[0]["reward"], 1.0, "{id}");
        // One run: the calculator asks the LLM twice (tool call, answer).
        assert_eq!(chats[&id], 2, "{id} ran once");
    }
    assert_eq!(retries.count(), 0, "no init was refused: {retries:?}");

    // A replica that saw neither init knows how the rollout ended.
    for i in (0..ROLLOUTS).step_by(500) {
        let status = replicas
            .status_at(&replica(i + 2), &format!("twice-{i}"))
            .await;
        assert_eq!(status["status"], "completed", "{status}");
        assert_eq!(status["reward"], 1.0, "{status}");
    }
    // /health totals over the replicas (their counts beat once a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = replicas.health().await;
        if health["completed_rollouts"] == ROLLOUTS && health["cluster"]["replicas"] == 3 {
            let own = health["cluster"]["completed_rollouts"].as_u64().unwrap();
            assert!(own < ROLLOUTS as u64, "one replica's own count: {health}");
            break;
        }
        assert!(Instant::now() < deadline, "health totals: {health}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_mid_run_calls_back_its_rollouts_and_the_others_take_over() {
    const ROLLOUTS: usize = 600;
    // Two chats of 300 ms: 600 ms a rollout, one init every 2 ms. At the
    // SIGTERM, r2's rollouts are 0-600 ms along: within a 0.3 s grace those
    // past half way complete, the others are ended.
    let trainer = Trainer::start_with(
        calculator_script("add", 5.0, 3.0, "8"),
        200,
        Duration::from_millis(300),
    )
    .await;
    let mut replicas = Replicas::start(3, &["--shutdown-grace", "0.3"]).await;
    let retries = Arc::new(Retries::default());
    let in_flight = Arc::new(Semaphore::new(96));
    let answered = Arc::new(AtomicUsize::new(0));
    let sends: Vec<_> = (0..ROLLOUTS)
        .map(|i| {
            let (url, trainer, retries) = (replicas.url.clone(), trainer.clone(), retries.clone());
            let (in_flight, answered) = (in_flight.clone(), answered.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(2 * i as u64)).await;
                let _place = in_flight.acquire_owned().await;
                let answer = init_via(
                    &url,
                    &init_body(&format!("term-{i}"), &trainer),
                    None,
                    &retries,
                )
                .await;
                assert_eq!(answer.status, 202, "{answer:?}");
                answered.fetch_add(1, Ordering::Relaxed);
                (i, answer.replica, Instant::now())
            })
        })
        .collect();
    while answered.load(Ordering::Relaxed) < ROLLOUTS / 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done_before: std::collections::HashSet<Value> = trainer
        .completions()
        .into_iter()
        .map(|c| c.body["rollout_id"].clone())
        .collect();
    let stopping = Instant::now();
    let exit = tokio::task::block_in_place(|| replicas.hosts[1].terminate());
    assert!(exit.success(), "r2 exits cleanly: {exit:?}");
    eprintln!(
        "DEBUG {:.2}s\n{}",
        stopping.elapsed().as_secs_f64(),
        replicas.hosts[1]
            .log()
            .lines()
            .filter(|l| !l.contains("rollout accepted"))
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut by_replica: HashMap<String, Vec<usize>> = HashMap::new();
    for send in sends {
        let (i, replica, at) = send.await.expect("init task");
        if at > stopping + Duration::from_millis(500) {
            assert_ne!(replica, "r2", "term-{i} answered by r2 after its SIGTERM");
        }
        by_replica.entry(replica).or_default().push(i);
    }
    all_called_back(&trainer, ROLLOUTS).await;
    let (callbacks, chats) = by_rollout(&trainer);
    assert_eq!(callbacks.len(), ROLLOUTS);
    let (mut ended_by_shutdown, mut completed_in_grace) = (0, 0);
    for (replica, ids) in &by_replica {
        for i in ids {
            let id = format!("term-{i}");
            let mine = &callbacks[&id];
            assert_eq!(mine.len(), 1, "{id}: one callback: {mine:#?}");
            assert!(chats.get(&id).copied().unwrap_or(0) <= 2, "{id} ran once");
            match (replica.as_str(), mine[0]["status"].as_str()) {
                (_, Some("COMPLETED")) => {
                    assert_eq!(mine[0]["reward"], 1.0);
                    if replica == "r2" && !done_before.contains(&mine[0]["rollout_id"]) {
                        completed_in_grace += 1;
                    }
                }
                ("r2", Some("ERROR")) => {
                    let message = mine[0]["error_message"].as_str().unwrap_or("");
                    assert!(message.contains("shut down"), "{id}: {message}");
                    ended_by_shutdown += 1;
                }
                _ => panic!("{id} on {replica}: {:#}", mine[0]),
            }
        }
    }
    let r2 = by_replica.get("r2").map_or(0, Vec::len);
    eprintln!(
        "r2 took {r2} of {ROLLOUTS} before its SIGTERM, {completed_in_grace} completed within its grace, \
         {ended_by_shutdown} ended by its shutdown; r1 {} and r3 {}; {} inits tried again",
        by_replica.get("r1").map_or(0, Vec::len),
        by_replica.get("r3").map_or(0, Vec::len),
        retries.count()
    );
    assert!(r2 > 0, "r2 ran rollouts before it stopped");
    assert!(
        ended_by_shutdown > 0 && completed_in_grace > 0,
        "r2's rollouts in flight at its SIGTERM: some completed within the grace, \
         the others were still running when it ran out"
    );
    let health = replicas.health().await;
    assert_ne!(health["cluster"]["replica"], "r2");
    assert_eq!(health["cluster"]["replicas"], 2, "r2 left: {health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_refuses_inits_meanwhile_and_runs_no_claimed_rollout_twice() {
    const ROLLOUTS: usize = 1_000;
    let trainer = Trainer::calculator("add", 5.0, 3.0, "8").await;
    let mut replicas = Replicas::start(3, &[]).await;
    let retries = Arc::new(Retries::default());
    let in_flight = Arc::new(Semaphore::new(64));
    let answered = Arc::new(AtomicUsize::new(0));
    let sends: Vec<_> = (0..ROLLOUTS)
        .map(|i| {
            let (url, trainer, retries) = (replicas.url.clone(), trainer.clone(), retries.clone());
            let (in_flight, answered) = (in_flight.clone(), answered.clone());
            tokio::spawn(async move {
                let _place = in_flight.acquire_owned().await;
                let body = init_body(&format!("redis-{i}"), &trainer);
                let a = init_via(&url, &body, Some(&replica(i)), &retries).await;
                answered.fetch_add(1, Ordering::Relaxed);
                let b = init_via(&url, &body, Some(&replica(i + 1)), &retries).await;
                assert_eq!((a.status, b.status), (202, 202), "{a:?} {b:?}");
                assert_eq!(a.body, b.body, "redis-{i}: the duplicate's answer");
                (i, a.body, Instant::now())
            })
        })
        .collect();
    while answered.load(Ordering::Relaxed) < ROLLOUTS * 3 / 10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused_before = retries.count();
    let down = Instant::now();
    tokio::task::block_in_place(|| replicas.redis.stop());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| replicas.redis.run());
    let up = Instant::now();
    let mut answers = Vec::new();
    for send in sends {
        answers.push(send.await.expect("init task"));
    }
    let refused = retries.count() - refused_before;
    eprintln!(
        "Redis down {:.1} s: {refused} inits refused with 503 and tried again",
        (up - down).as_secs_f64()
    );
    assert!(refused > 0, "inits sent while Redis was down were refused");
    // A third init of each rollout claimed before the restart, to the
    // replica that saw neither: the first answer, and no new run.
    let again = Retries::default();
    for (i, first, at) in &answers {
        if *at < down {
            let body = init_body(&format!("redis-{i}"), &trainer);
            let c = init_via(&replicas.url, &body, Some(&replica(i + 2)), &again).await;
            assert_eq!(c.status, 202);
            assert_eq!(&c.body, first, "redis-{i} after the restart");
        }
    }
    all_called_back(&trainer, ROLLOUTS).await;
    let (callbacks, chats) = by_rollout(&trainer);
    assert_eq!(callbacks.len(), ROLLOUTS);
    for i in 0..ROLLOUTS {
        let id = format!("redis-{i}");
        assert_eq!(callbacks[&id].len(), 1, "{id}: {:#?}", callbacks[&id]);
        assert_eq!(callbacks[&id][0]["status"], "COMPLETED");
        assert_eq!(chats[&id], 2, "{id} ran once");
    }
    for host in &replicas.hosts {
        let (status, health) = host.get("/health", None).await;
        assert_eq!(status, 200, "{health}");
        assert!(health["cluster"].get("redis").is_none(), "{health}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_one_replica_stops_the_rollouts_of_every_replica() {
    // The trainer never answers in time: every rollout waits in its chat.
    let trainer = Trainer::slow(Duration::from_secs(60)).await;
    let replicas = Replicas::start(3, &[]).await;
    let none = Retries::default();
    for i in 0..9 {
        for step in ["step", "other"] {
            let body = init_body(&format!("{step}-{i}"), &trainer);
            let answer = init_via(&replicas.url, &body, Some(&replica(i)), &none).await;
            assert_eq!((answer.status, answer.replica), (202, replica(i)));
        }
    }
    // Each replica's rollouts are waiting in their first chat.
    while trainer.chats().len() < 18 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let answer = replicas.cancel_at("r1", json!({"prefix": "step-"})).await;
    assert_eq!(answer["replicas_told"], 2, "{answer}");
    let here = answer["dispositions"].as_object().unwrap();
    assert_eq!(here.len(), 3, "r1 lists its own: {answer}");
    trainer.wait_completions(9, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (callbacks, _) = by_rollout(&trainer);
    assert_eq!(
        callbacks.len(),
        9,
        "only the step- rollouts: {:?}",
        callbacks.keys()
    );
    for i in 0..9 {
        let done = &callbacks[&format!("step-{i}")];
        assert_eq!(done.len(), 1);
        assert_eq!(done[0]["status"], "ERROR");
        let message = done[0]["error_message"].as_str().unwrap_or("");
        assert!(message.contains("cancelled"), "{message}");
    }
    // Asked at r3, a rollout r2 ran: its status from Redis.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = replicas.status_at("r3", "step-1").await;
        if status["status"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // By id, at a replica that runs neither: answered from Redis.
    let answer = replicas
        .cancel_at("r3", json!({"ids": ["other-1", "step-1", "nobody"]}))
        .await;
    assert_eq!(
        answer["dispositions"],
        json!({"other-1": "cancelled_running", "step-1": "already_finished", "nobody": "not_found"}),
        "{answer}"
    );
    trainer.wait_completions(10, Duration::from_secs(10)).await;
    let done = trainer.single_completion("other-1").await;
    assert_eq!(done["status"], "ERROR", "{done}");
    assert!(trainer.completion_for("other-0").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_config_map_swaps_the_plugin_on_every_replica() {
    // The layout the kubelet writes a ConfigMap volume in: the file is a
    // link through `..data`, which an update points at a new directory.
    let volume = tempfile::tempdir().expect("tempdir");
    let dir = volume.path();
    let publish = |version: &str, wasm: &Path| {
        std::fs::create_dir(dir.join(version)).unwrap();
        std::fs::copy(wasm, dir.join(version).join("agent.wasm")).unwrap();
        std::os::unix::fs::symlink(version, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    };
    publish("..v1", &plugin("calc"));
    std::os::unix::fs::symlink("..data/agent.wasm", dir.join("agent.wasm")).unwrap();
    let replicas = Replicas::start_serving(&dir.join("agent.wasm"), 3, &["--reload"]).await;
    for r in ["r1", "r2", "r3"] {
        assert_eq!(
            replicas.get_at(r, "/health").await["agent_loop"],
            "calculator"
        );
    }

    publish("..v2", &plugin("misbehave"));
    std::fs::remove_dir_all(dir.join("..v1")).unwrap();
    let sha = crate::harness::sha256_file(&plugin("misbehave"));
    let deadline = Instant::now() + Duration::from_secs(20);
    for r in ["r1", "r2", "r3"] {
        loop {
            let health = replicas.get_at(r, "/health").await;
            if health["agent_loop"] == "misbehave" {
                assert_eq!(health["build"]["plugin_sha256"], sha.as_str(), "{health}");
                break;
            }
            assert!(Instant::now() < deadline, "{r} still serves {health}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[test]
fn a_bad_redis_url_or_replica_name_is_refused_at_start_with_exit_2() {
    for (flag, value, expected) in [
        ("--redis", "localhost:6379", "not a Redis URL"),
        ("--redis", "redis://", "not a Redis URL"),
        (
            "--replica-id",
            "two words",
            "printable ASCII characters without spaces",
        ),
    ] {
        let out = Command::new(crate::harness::host_binary())
            .arg("--plugin")
            .arg(plugin("calc"))
            .args([flag, value, "--port", "0"])
            .env("RUST_LOG", "off")
            .output()
            .expect("run rollout-host");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(expected), "{flag} {value}: {stderr}");
        assert!(stderr.contains(value), "names the value: {stderr}");
    }
}
