//! Test harness: builds the wasm plugins once, starts the real
//! `rollout-host` binary, and runs a scripted trainer (a real HTTP server).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_owned()
}

/// The calculator agent in each guest language: Rust, Python, JavaScript.
pub const CALCULATORS: [&str; 3] = ["calc", "calc-py", "calc-js"];

/// The misbehaving test plugin in each guest language.
pub const MISBEHAVERS: [&str; 3] = ["misbehave", "misbehave-py", "misbehave-js"];

/// The plugin `name`: a directory `plugins/<name>/` or
/// `plugins/testing/<name>/` with a `build.sh` is built by it (once per test run; its last line is the .wasm); any other
/// name is a crate of the Rust guest workspace.
pub fn plugin(name: &str) -> PathBuf {
    let plugins = repo_root().join("plugins");
    let scripts =
        [plugins.join(name), plugins.join("testing").join(name)].map(|d| d.join("build.sh"));
    match scripts.iter().find(|s| s.exists()) {
        Some(script) => built_by_script(name, script),
        None => rust_plugin(name),
    }
}

/// Puts a copy of `src` at `dest` by rename, the way a deployment should.
pub fn deploy(src: &Path, dest: &Path) {
    let staged = dest.with_extension("staged");
    std::fs::copy(src, &staged).unwrap();
    std::fs::rename(&staged, dest).unwrap();
}

/// Sends the server SIGHUP (reload its plugin files).
pub fn hang_up(server: &Server) {
    let sent = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// The sha256 of a file, in hex (what the host names a plugin build by).
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).expect("read the plugin");
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs a plugin's `build.sh` the first time it is asked for (one build
/// at a time: they install toolchains into the same `.tools/`).
fn built_by_script(name: &str, script: &Path) -> PathBuf {
    static BUILT: Mutex<Vec<(String, Result<PathBuf, String>)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, result)) = built.iter().find(|(n, _)| n == name) {
        return result.clone().unwrap_or_else(|e| panic!("{e}"));
    }
    let result = Command::new("bash")
        .arg(script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))
        .and_then(|out| {
            let stdout = String::from_utf8_lossy(&out.stdout);
            match stdout.lines().last() {
                Some(path) if out.status.success() => Ok(PathBuf::from(path.trim())),
                _ => Err(format!(
                    "{} failed:\n{stdout}\n{}",
                    script.display(),
                    String::from_utf8_lossy(&out.stderr)
                )),
            }
        });
    built.push((name.to_owned(), result.clone()));
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// `plugins/target/wasm32-wasip2/release/<name>.wasm`, building the guest
/// workspace once per test run.
fn rust_plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let plugins = repo_root().join("plugins");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let output = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(plugins.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", plugins.join("target"))
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("RUSTFLAGS")
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "building plugins failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(plugins.join("target/wasm32-wasip2/release"))
    });
    match dir {
        Ok(dir) => dir.join(format!("{}.wasm", name.replace('-', "_"))),
        Err(e) => panic!("{e}"),
    }
}

/// How messages name a build of plugin `name` whose agent is `agent`:
/// `agent@` and the first 7 hex digits of the file's sha256.
pub fn build_label(name: &str, agent: &str) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(plugin(name)).expect("plugin file");
    let hex: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{agent}@{}", &hex[..7])
}

pub fn host_binary() -> &'static str {
    env!("CARGO_BIN_EXE_rollout-host")
}

/// The compile cache the tests' servers share (under target/tmp), so each
/// plugin build is compiled once per machine, not once per server.
pub fn compile_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("compile-cache")
}

/// One server at a time: the limit and latency tests time things on a
/// 2-core machine, so servers do not compete with each other for the CPU.
pub struct Serial;

static BUSY: Mutex<bool> = Mutex::new(false);
static FREED: std::sync::Condvar = std::sync::Condvar::new();

impl Serial {
    pub fn acquire() -> Serial {
        let mut busy = BUSY.lock().unwrap_or_else(|p| p.into_inner());
        while *busy {
            busy = FREED.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        *busy = true;
        Serial
    }
}

impl Drop for Serial {
    fn drop(&mut self) {
        *BUSY.lock().unwrap_or_else(|p| p.into_inner()) = false;
        FREED.notify_one();
    }
}

/// A running `rollout-host`; killed on drop.
pub struct Server {
    child: Child,
    pub url: String,
    /// When the process was started.
    pub spawned: Instant,
    log: Arc<Mutex<String>>,
    /// Held by a server started alone; several started together (replicas)
    /// share their caller's.
    _serial: Option<Serial>,
}

impl Server {
    pub fn start(plugin_name: &str, args: &[&str]) -> Server {
        Self::start_path(&plugin(plugin_name), args)
    }

    pub fn start_path(plugin: &Path, args: &[&str]) -> Server {
        Self::start_command(plugin, args, Command::new(host_binary()))
    }

    /// Starts the server from `command` (the binary, with any environment
    /// or process limits the test sets on it).
    pub fn start_command(plugin: &Path, args: &[&str], command: Command) -> Server {
        Self::spawn(plugin, args, command, Some(Serial::acquire()))
    }

    /// Starts one of several servers a test runs at once; the caller holds
    /// the [`Serial`] lock for all of them.
    pub fn start_beside(plugin: &Path, args: &[&str], _held: &Serial) -> Server {
        Self::spawn(plugin, args, Command::new(host_binary()), None)
    }

    fn spawn(plugin: &Path, args: &[&str], mut command: Command, serial: Option<Serial>) -> Server {
        let mut child = command
            .arg("--plugin")
            .arg(plugin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--retry-base-delay",
                "0.02",
            ])
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .env_remove("ROLLOUT_DEBUG_DIR")
            .env_remove("ROLLOUT_API_KEY")
            .env("ROLLOUT_CACHE_DIR", compile_cache())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rollout-host");
        let spawned = Instant::now();
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on http://") {
                    let addr = line[at + "listening on ".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    let _ = tx.send(addr);
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(url) => Server {
                child,
                url,
                spawned,
                log,
                _serial: serial,
            },
            Err(_) => {
                let _ = child.kill();
                panic!("rollout-host did not start:\n{}", log.lock().unwrap());
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A KiB figure of /proc/PID/status (`VmRSS`, `RssFile`, ...).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{field} in {status}"))
    }

    /// Lines of /proc/PID/maps: the process's memory mappings.
    pub fn mappings(&self) -> usize {
        std::fs::read_to_string(format!("/proc/{}/maps", self.pid()))
            .expect("read maps")
            .lines()
            .count()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "rollout-host did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn init(&self, body: &Value) -> (u16, Value) {
        self.init_with(body, None).await
    }

    pub async fn init_with(&self, body: &Value, authorization: Option<&str>) -> (u16, Value) {
        let (status, bytes) = self
            .init_raw(body.to_string().into_bytes(), authorization)
            .await;
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("non-JSON answer: {}", String::from_utf8_lossy(&bytes)));
        (status, json)
    }

    pub async fn init_raw(&self, body: Vec<u8>, authorization: Option<&str>) -> (u16, Bytes) {
        let mut request = client()
            .post(format!("{}/v1/rollout/init", self.url))
            .header("content-type", "application/json")
            .body(body);
        if let Some(auth) = authorization {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.expect("init request");
        let status = response.status().as_u16();
        (status, response.bytes().await.expect("init body"))
    }

    pub async fn get(&self, path: &str, authorization: Option<&str>) -> (u16, Value) {
        let mut request = client().get(format!("{}{path}", self.url));
        if let Some(auth) = authorization {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes spinning on the CPU at normal priority (a co-located trainer
/// or data loader); killed on drop.
pub struct BusyProcesses(Vec<Child>);

impl BusyProcesses {
    pub fn start(n: usize) -> Self {
        Self(
            (0..n)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("start a busy process")
                })
                .collect(),
        )
    }
}

impl Drop for BusyProcesses {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

/// What the trainer saw of one HTTP call.
#[derive(Debug, Clone)]
pub struct Call {
    pub authorization: Option<String>,
    pub body: Value,
}

/// Decides the trainer's answer to a chat call: gets the request body and
/// how many chat calls (attempts included) this rollout made before it.
pub type ChatScript = dyn Fn(&Value, usize) -> (u16, Value) + Send + Sync;

struct TrainerState {
    script: Box<ChatScript>,
    completed_status: u16,
    chats: Mutex<Vec<Call>>,
    completions: Mutex<Vec<Call>>,
    /// How many callbacks arrived, for those who wait on it.
    called_back: tokio::sync::watch::Sender<usize>,
    chat_delay: Duration,
}

/// A scripted trainer: `/v1/chat/completions` answers from the script,
/// `/v1/rollout/completed` records the callback.
#[derive(Clone)]
pub struct Trainer {
    pub url: String,
    state: Arc<TrainerState>,
    app: Router,
    /// The serving task and its stop switch, while it serves.
    serving: Arc<Mutex<Option<Serving>>>,
}

type Serving = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

/// Serves `app` on `listener` until told to stop (then it finishes the
/// requests in progress and closes its connections).
fn serve(listener: tokio::net::TcpListener, app: Router) -> Serving {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    (stop, task)
}

impl Trainer {
    pub async fn start(
        script: impl Fn(&Value, usize) -> (u16, Value) + Send + Sync + 'static,
    ) -> Trainer {
        Self::start_with(script, 200, Duration::ZERO).await
    }

    /// The calculator script: asks for `op(a, b)`, then answers `#### answer`.
    pub async fn calculator(op: &'static str, a: f64, b: f64, answer: &'static str) -> Trainer {
        Self::start(calculator_script(op, a, b, answer)).await
    }

    /// The calculator script for `1 + 1`, answering every chat after `delay`.
    pub async fn slow(delay: Duration) -> Trainer {
        Self::start_with(calculator_script("add", 1.0, 1.0, "2"), 200, delay).await
    }

    pub async fn start_with(
        script: impl Fn(&Value, usize) -> (u16, Value) + Send + Sync + 'static,
        completed_status: u16,
        chat_delay: Duration,
    ) -> Trainer {
        let state = Arc::new(TrainerState {
            script: Box::new(script),
            completed_status,
            chats: Mutex::default(),
            completions: Mutex::default(),
            called_back: tokio::sync::watch::Sender::new(0),
            chat_delay,
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/rollout/completed", post(completed))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind trainer");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let serving = serve(listener, app.clone());
        Trainer {
            url,
            state,
            app,
            serving: Arc::new(Mutex::new(Some(serving))),
        }
    }

    /// The trainer goes away: its port refuses connections until
    /// [`Trainer::come_back`].
    pub async fn go_away(&self) {
        let serving = self.serving.lock().unwrap().take();
        if let Some((stop, task)) = serving {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// The trainer serves again, on the same port.
    pub async fn come_back(&self) {
        let addr = self.url.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .expect("bind the trainer's port again");
        *self.serving.lock().unwrap() = Some(serve(listener, self.app.clone()));
    }

    pub fn chats(&self) -> Vec<Call> {
        self.state.chats.lock().unwrap().clone()
    }

    pub fn chats_for(&self, rollout_id: &str) -> Vec<Call> {
        self.chats()
            .into_iter()
            .filter(|c| c.body["rollout_id"] == rollout_id)
            .collect()
    }

    pub fn completions(&self) -> Vec<Call> {
        self.state.completions.lock().unwrap().clone()
    }

    /// The first callback for `rollout_id`, if it arrived.
    pub fn completion_for(&self, rollout_id: &str) -> Option<Value> {
        let completions = self.state.completions.lock().unwrap();
        completions
            .iter()
            .find(|c| c.body["rollout_id"] == rollout_id)
            .map(|c| c.body.clone())
    }

    /// Waits until `n` callbacks arrived (panics after `timeout`).
    pub async fn wait_completions(&self, n: usize, timeout: Duration) -> Vec<Call> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.completions();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} completion callbacks, got {}: {got:#?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until at least `n` callbacks arrived (the caller bounds the wait).
    pub async fn called_back(&self, n: usize) {
        let mut count = self.state.called_back.subscribe();
        let _ = count.wait_for(|&got| got >= n).await;
    }

    /// The one callback for `rollout_id`, after checking no second one comes.
    pub async fn single_completion(&self, rollout_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .completions()
            .iter()
            .any(|c| c.body["rollout_id"] == rollout_id)
        {
            assert!(
                Instant::now() < deadline,
                "no completion callback for {rollout_id}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mine: Vec<_> = self
            .completions()
            .into_iter()
            .filter(|c| c.body["rollout_id"] == rollout_id)
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "exactly one callback for {rollout_id}: {mine:#?}"
        );
        mine[0].body.clone()
    }
}

async fn chat(
    State(state): State<Arc<TrainerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let body: Value = serde_json::from_slice(&body).expect("chat body is JSON");
    let index = {
        let mut chats = state.chats.lock().unwrap();
        let index = chats
            .iter()
            .filter(|c| c.body["rollout_id"] == body["rollout_id"])
            .count();
        chats.push(Call {
            authorization: auth(&headers),
            body: body.clone(),
        });
        index
    };
    if !state.chat_delay.is_zero() {
        tokio::time::sleep(state.chat_delay).await;
    }
    let (status, reply) = (state.script)(&body, index);
    (StatusCode::from_u16(status).unwrap(), axum::Json(reply))
}

async fn completed(
    State(state): State<Arc<TrainerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let body: Value = serde_json::from_slice(&body).expect("completion body is JSON");
    let mut completions = state.completions.lock().unwrap();
    completions.push(Call {
        authorization: auth(&headers),
        body,
    });
    state.called_back.send_replace(completions.len());
    drop(completions);
    StatusCode::from_u16(state.completed_status).unwrap()
}

fn auth(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// An OpenAI chat.completion with `message`.
pub fn completion(message: Value, finish_reason: &str, completion_tokens: u64) -> Value {
    json!({
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "test",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 10, "completion_tokens": completion_tokens, "total_tokens": 10 + completion_tokens}
    })
}

/// First call: a tool call `op(a, b)`; once a tool result is in the
/// history: the final answer `#### answer`.
pub fn calculator_script(
    op: &'static str,
    a: f64,
    b: f64,
    answer: &'static str,
) -> impl Fn(&Value, usize) -> (u16, Value) + Send + Sync {
    move |body, _| {
        let has_tool_result = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["role"] == "tool");
        let reply = if has_tool_result {
            completion(
                json!({"role": "assistant", "content": format!("The answer is #### {answer}")}),
                "stop",
                8,
            )
        } else {
            let args = json!({"a": a, "b": b}).to_string();
            completion(
                json!({"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": op, "arguments": args}}
                ]}),
                "tool_calls",
                12,
            )
        };
        (200, reply)
    }
}

/// An init body that runs the misbehave plugin's `mode`.
pub fn misbehave_body(id: &str, trainer: &Trainer, mode: &str) -> Value {
    let mut body = init_body(id, trainer);
    body["metadata"] = json!({"mode": mode});
    body
}

/// A valid init body for `rollout_id` against `trainer`.
pub fn init_body(rollout_id: &str, trainer: &Trainer) -> Value {
    json!({
        "rollout_id": rollout_id,
        "server_url": format!("{}/", trainer.url),
        "messages": [
            {"role": "system", "content": "You are a calculator."},
            {"role": "user", "content": "What is 5 + 3?"}
        ],
        "completion_params": {"temperature": 0.3, "max_tokens": 64, "stop": "###"},
        "metadata": {"ground_truth": "8"}
    })
}
