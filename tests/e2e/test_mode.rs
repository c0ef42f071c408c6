//! `rollout-host test`: the real binary runs the calculator plugin over
//! datasets against a mock OpenAI-compatible LLM (a real HTTP server here)
//! that checks every request and answers as a scripted model.

use crate::datasets::{
    self, WriteRows, calc_jsonl, calc_rows, write_csv, write_json, write_jsonl, write_parquet,
};
use crate::harness::{Serial, host_binary, plugin};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "sk-test-key";
const MODEL: &str = "calc-model";

/// How the mock answers.
#[derive(Clone, Copy)]
pub enum Behaviour {
    /// A model that uses the calculator's tools and answers right.
    Calculator,
    /// Always this status, with an OpenAI-style error body.
    Status(u16),
    /// 429 (Retry-After: 1) to the first request, then the calculator.
    RateLimitedOnce,
    /// The calculator, after this long.
    Slow(Duration),
}

struct MockState {
    behaviour: Behaviour,
    requests: Mutex<Vec<Value>>,
    /// Requests that broke a rule the host must follow.
    problems: Mutex<Vec<String>>,
}

/// A mock LLM at `url` (the base URL, `/v1` included).
pub struct MockLlm {
    pub url: String,
    state: Arc<MockState>,
}

impl MockLlm {
    pub async fn start(behaviour: Behaviour) -> MockLlm {
        let state = Arc::new(MockState {
            behaviour,
            requests: Mutex::default(),
            problems: Mutex::default(),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        MockLlm { url, state }
    }

    pub fn requests(&self) -> Vec<Value> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn problems(&self) -> Vec<String> {
        self.state.problems.lock().unwrap().clone()
    }
}

fn error_body(status: u16, message: &str) -> Response {
    let body =
        json!({"error": {"message": message, "type": "invalid_request_error", "code": null}});
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

async fn chat(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).expect("chat body is JSON");
    let index = {
        let mut requests = state.requests.lock().unwrap();
        requests.push(body.clone());
        requests.len() - 1
    };
    let problem = |p: String| state.problems.lock().unwrap().push(p);
    // An OpenAI-style API: the key and the model are checked first.
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}"))
    {
        return error_body(401, "Incorrect API key provided");
    }
    if body["model"] != MODEL {
        return error_body(
            404,
            &format!("The model `{}` does not exist", body["model"]),
        );
    }
    for field in ["rollout_id", "logprobs"] {
        if body.get(field).is_some() {
            problem(format!("request {index} has the trainer field {field}"));
        }
    }
    let tools: Vec<&str> = body["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter(|t| {
                    t["type"] == "function" && t["function"]["parameters"]["type"] == "object"
                })
                .filter_map(|t| t["function"]["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    if tools != ["add", "subtract", "multiply", "divide"] {
        problem(format!("request {index} has tools {:?}", body["tools"]));
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    if messages.len() < 2 || messages[0]["role"] != "system" || messages[1]["role"] != "user" {
        problem(format!(
            "request {index} does not start [system, user]: {messages:?}"
        ));
    }
    match state.behaviour {
        Behaviour::Status(status) => return error_body(status, "the mock is told to fail"),
        Behaviour::RateLimitedOnce if index == 0 => {
            let mut response = error_body(429, "Rate limit reached");
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            return response;
        }
        Behaviour::Slow(delay) => tokio::time::sleep(delay).await,
        _ => {}
    }
    let reply = calculator_reply(&messages);
    match reply {
        Ok(reply) => (StatusCode::OK, axum::Json(reply)).into_response(),
        Err(e) => {
            problem(format!("request {index}: {e}"));
            error_body(400, &e)
        }
    }
}

/// The scripted model: a tool call for `What is A <op> B?`, then the tool's
/// result as `#### <result>`.
fn calculator_reply(messages: &[Value]) -> Result<Value, String> {
    let usage = |completion: u64| json!({"prompt_tokens": 20, "completion_tokens": completion, "total_tokens": 20 + completion});
    if let Some(result) = messages.iter().rev().find(|m| m["role"] == "tool") {
        let content = result["content"].as_str().unwrap_or("?");
        return Ok(json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": format!("The result is\n#### {content}")}}],
            "usage": usage(8),
        }));
    }
    let question = messages[1]["content"].as_str().unwrap_or("");
    let words: Vec<&str> = question
        .trim_start_matches("What is ")
        .trim_end_matches('?')
        .split(' ')
        .collect();
    let (a, op, b) = match words.as_slice() {
        [a, "plus", b] => (a, "add", b),
        [a, "minus", b] => (a, "subtract", b),
        [a, "times", b] => (a, "multiply", b),
        [a, "divided", "by", b] => (a, "divide", b),
        _ => return Err(format!("cannot read the question {question:?}")),
    };
    let number = |s: &str| s.parse::<f64>().map_err(|e| format!("{s}: {e}"));
    let arguments = json!({"a": number(a)?, "b": number(b)?}).to_string();
    Ok(json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null,
            "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": op, "arguments": arguments}}]
        }}],
        "usage": usage(12),
    }))
}

/// Runs `rollout-host test` on the calculator plugin against `llm`, with
/// `args` after the defaults; the environment holds no provider keys.
pub fn run_test(llm: &MockLlm, dataset: &Path, args: &[&str]) -> Output {
    let _serial = Serial::acquire();
    test_command(llm, dataset, args)
        .output()
        .expect("run rollout-host test")
}

fn test_command(llm: &MockLlm, dataset: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(host_binary());
    command
        .arg("test")
        .arg("-d")
        .arg(dataset)
        .args(["--retry-base-delay", "0.05"]);
    // The Rust calculator, the mock's URL, model and key unless the test
    // gives its own.
    if !args.contains(&"--plugin") {
        command.arg("--plugin").arg(plugin("calc"));
    }
    for (flag, value) in [
        ("--base-url", llm.url.as_str()),
        ("--model", MODEL),
        ("--api-key", KEY),
    ] {
        if !args.contains(&flag) {
            command.args([flag, value]);
        }
    }
    command
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("OPENAI_API_KEY")
        .env_remove("RUST_LOG")
        .env("ROLLOUT_CACHE_DIR", crate::harness::compile_cache())
        .stdin(Stdio::null());
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn results(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("results file")).expect("results JSON")
}

/// The calculator rows with two ground truths made wrong (reward 0 there).
fn rows_with_two_wrong() -> Vec<Map<String, Value>> {
    let mut rows = calc_rows();
    for i in [3, 7] {
        rows[i].insert("ground_truth".into(), json!("-1"));
    }
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn each_dataset_format_runs_with_the_right_rewards_and_results() {
    let dir = tempfile::tempdir().unwrap();
    let rows = rows_with_two_wrong();
    let writers: [(&str, WriteRows); 4] = [
        ("rows.jsonl", write_jsonl),
        ("rows.json", write_json),
        ("rows.csv", write_csv),
        ("rows.parquet", write_parquet),
    ];
    for (name, write) in writers {
        let llm = MockLlm::start(Behaviour::Calculator).await;
        let dataset = dir.path().join(name);
        write(&dataset, &rows);
        let out = dir.path().join(format!("{name}.results.json"));
        let run = run_test(
            &llm,
            &dataset,
            &["-o", out.to_str().unwrap(), "--limit", "10", "-c", "4"],
        );
        let stdout = text(&run.stdout);
        assert_eq!(
            run.status.code(),
            Some(0),
            "{name}: {stdout}\n{}",
            text(&run.stderr)
        );
        assert_eq!(llm.problems(), Vec::<String>::new(), "{name}");
        // Two calls a row: the tool call, then the answer.
        assert_eq!(llm.requests().len(), 20, "{name}");
        let first = &llm.requests()[0];
        assert_eq!(
            first["messages"][0]["content"],
            json!(datasets::CALC_SYSTEM_PROMPT)
        );

        let results = results(&out);
        let summary = &results["summary"];
        assert_eq!(summary["total"], json!(10), "{name}: {summary}");
        assert_eq!(
            (summary["passed"].clone(), summary["failed"].clone()),
            (json!(10), json!(0))
        );
        assert_eq!(summary["total_tokens"], json!(10 * (20 + 12 + 20 + 8)));
        assert_eq!(summary["reward"]["mean"], json!(0.8));
        assert_eq!(summary["pass_at_k"]["1"], json!(0.8));
        assert!(summary["total_duration_ms"].as_f64().unwrap() > 0.0);
        let list = results["results"].as_array().unwrap();
        assert_eq!(list.len(), 10);
        for (i, r) in list.iter().enumerate() {
            let expected = if i == 3 || i == 7 { 0.0 } else { 1.0 };
            assert_eq!(r["row_index"], json!(i));
            assert_eq!(r["reward"], json!(expected), "{name} row {i}: {r}");
            assert_eq!(r["success"], json!(true));
            assert_eq!(r["error"], Value::Null);
            assert_eq!(r["finish_reason"], json!("stop"));
            assert_eq!(r["rollout_id"], json!(format!("test-{i}")));
            assert_eq!(
                r["token_usage"],
                json!({"prompt_tokens": 40, "completion_tokens": 20, "total_tokens": 60, "num_llm_calls": 2})
            );
            assert_eq!(r["num_tool_calls"], json!(1));
            assert_eq!(r["final_messages"].as_array().unwrap().len(), 5);
            assert!(r["duration_ms"].as_f64().unwrap() > 0.0);
        }
        // Not a terminal: one plain line a run, then the summary.
        assert_eq!(
            stdout.lines().filter(|l| l.starts_with('[')).count(),
            10,
            "{stdout}"
        );
        assert!(stdout.contains("] row 3: OK reward 0.0 ("), "{stdout}");
        assert!(stdout.contains("] row 0: OK reward 1.0 ("), "{stdout}");
        assert!(stdout.contains("mean 0.800"), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_and_js_calculators_run_in_test_mode_too() {
    for name in ["calc-py", "calc-js"] {
        let llm = MockLlm::start(Behaviour::Calculator).await;
        let path = plugin(name);
        let run = run_test(
            &llm,
            &calc_jsonl(),
            &[
                "--plugin",
                path.to_str().unwrap(),
                "--limit",
                "4",
                "-c",
                "2",
            ],
        );
        let stdout = text(&run.stdout);
        assert_eq!(
            run.status.code(),
            Some(0),
            "{name}: {stdout}\n{}",
            text(&run.stderr)
        );
        assert_eq!(llm.problems(), Vec::<String>::new(), "{name}");
        assert_eq!(llm.requests().len(), 8, "{name}");
        assert_eq!(
            stdout.matches(": OK reward 1.0 (").count(),
            4,
            "{name}: {stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_offset_runs_per_row_and_sampling_flags_reach_the_rollout() {
    let llm = MockLlm::start(Behaviour::Calculator).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let run = run_test(
        &llm,
        &calc_jsonl(),
        &[
            "--offset",
            "20",
            "--n",
            "3",
            "--temperature",
            "0.2",
            "--max-tokens",
            "99",
            "--pass-threshold",
            "0.5",
            "-q",
            "-o",
            out.to_str().unwrap(),
            "--debug",
            dir.path().to_str().unwrap(),
        ],
    );
    let stdout = text(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&run.stderr)
    );
    // -q: no per-run lines.
    assert!(!stdout.lines().any(|l| l.starts_with('[')), "{stdout}");
    let requests = llm.requests();
    assert_eq!(requests.len(), 4 * 3 * 2);
    for r in &requests {
        assert_eq!(
            (r["temperature"].clone(), r["max_tokens"].clone()),
            (json!(0.2), json!(99))
        );
    }
    let results = results(&out);
    let list = results["results"].as_array().unwrap();
    let ids: Vec<&str> = list
        .iter()
        .map(|r| r["rollout_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids[..4],
        ["test-20-0", "test-20-1", "test-20-2", "test-21-0"]
    );
    assert_eq!(
        results["summary"]["pass_at_k"],
        json!({"1": 1.0, "2": 1.0, "3": 1.0})
    );
    assert_eq!(results["summary"]["runs_per_row"], json!(3));
    assert_eq!(results["summary"]["rows"], json!(4));
    // --debug: each run's log-events, as --log writes them when serving.
    let logs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().filter_map(Result::ok))
        .collect();
    assert_eq!(logs.len(), 12);
    let log = std::fs::read_to_string(
        logs.iter()
            .find(|e| e.file_name() == "test-21-2.jsonl")
            .unwrap()
            .path(),
    )
    .unwrap();
    assert!(log.contains(r#""event":"rollout_complete""#), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let out_arg = out.to_str().unwrap();

    // A wrong key: 401 stops the test at once with the hint.
    let llm = MockLlm::start(Behaviour::Calculator).await;
    let run = run_test(&llm, &calc_jsonl(), &["--api-key", "wrong", "-o", out_arg]);
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert_eq!(run.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("stopped: the LLM refused the API key (HTTP 401): Incorrect API key provided; pass --api-key"),
        "{stderr}"
    );
    assert_eq!(llm.requests().len(), 1, "one row ran, the rest were not");
    let summary = results(&out)["summary"].clone();
    assert_eq!(
        (summary["failed"].clone(), summary["not_run"].clone()),
        (json!(1), json!(23))
    );

    // A model the provider does not have: 404 with the hint.
    let run = run_test(&llm, &calc_jsonl(), &["--model", "gpt-5-nonexistent"]);
    let stderr = text(&run.stderr);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        stderr.contains("model 'gpt-5-nonexistent' or its endpoint")
            && stderr.contains("check --model and --base-url"),
        "{stderr}"
    );

    // 429 then 200: waited out (Retry-After: 1 s), then the row is fine.
    let llm = MockLlm::start(Behaviour::RateLimitedOnce).await;
    let started = Instant::now();
    let run = run_test(&llm, &calc_jsonl(), &["--limit", "1"]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stdout));
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(llm.requests().len(), 3);
    assert!(text(&run.stdout).contains("row 0: OK reward 1.0"));

    // 500 every time: retried, then the row fails with the status.
    let llm = MockLlm::start(Behaviour::Status(500)).await;
    let run = run_test(
        &llm,
        &calc_jsonl(),
        &["--limit", "2", "--chat-retries", "2"],
    );
    let stdout = text(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("row 0: FAILED")
            && stdout
                .contains("the LLM failed with HTTP 500 after 2 retries: the mock is told to fail"),
        "{stdout}"
    );
    assert_eq!(
        llm.requests().len(),
        2 * 3,
        "a 500 is not fatal: both rows tried, 3 attempts each"
    );

    // Too slow: the per-call timeout, said as such.
    let llm = MockLlm::start(Behaviour::Slow(Duration::from_secs(5))).await;
    let run = run_test(
        &llm,
        &calc_jsonl(),
        &[
            "--limit",
            "1",
            "--chat-timeout",
            "0.3",
            "--chat-retries",
            "0",
        ],
    );
    let stdout = text(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("the LLM did not answer within 0.3 s (0 retries); raise --chat-timeout"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_datasets_and_flags_are_one_line_exit_2_before_any_llm_call() {
    let llm = MockLlm::start(Behaviour::Calculator).await;
    let dir = tempfile::tempdir().unwrap();
    let good = calc_rows();
    let mut missing = good.clone();
    missing[2].remove("user_prompt");
    let mut empty = good.clone();
    empty[5].insert("ground_truth".into(), json!(""));
    let mut number = good.clone();
    number[1].insert("system_prompt".into(), json!(7));
    let mut null = good.clone();
    null[4].insert("user_prompt".into(), Value::Null);
    let no_truth: Vec<_> = good
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.remove("ground_truth");
            r
        })
        .collect();
    // Each file, the rows it is written from, and the start of its one line.
    type Case<'a> = (
        &'a str,
        Option<(WriteRows, &'a [Map<String, Value>])>,
        &'a str,
    );
    let cases: [Case; 8] = [
        (
            "missing.jsonl",
            Some((write_jsonl, &missing)),
            "row 2, column 'user_prompt': missing",
        ),
        (
            "empty.csv",
            Some((write_csv, &empty)),
            "row 5, column 'ground_truth': empty string",
        ),
        (
            "number.json",
            Some((write_json, &number)),
            "row 1, column 'system_prompt': must be a non-empty string, not a number",
        ),
        (
            "null.parquet",
            Some((write_parquet, &null)),
            "row 4, column 'user_prompt': must be a non-empty string, not null",
        ),
        (
            "missing.parquet",
            Some((write_parquet, &no_truth)),
            "row 0, column 'ground_truth': missing",
        ),
        ("broken.parquet", None, "not a readable Parquet file"),
        ("rows.txt", None, "unknown dataset format '.txt'"),
        ("absent.jsonl", None, "cannot read: No such file"),
    ];
    for (name, write, expected) in cases {
        let path = dir.path().join(name);
        match (write, name) {
            (Some((write, rows)), _) => write(&path, rows),
            (None, "broken.parquet") => std::fs::write(&path, b"PAR1 not really").unwrap(),
            (None, "rows.txt") => std::fs::write(&path, "x").unwrap(),
            (None, _) => {}
        }
        let run = run_test(&llm, &path, &[]);
        let stderr = text(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{name}: {stderr}");
        let line = format!("rollout-host test: {}: {expected}", path.display());
        assert!(stderr.starts_with(&line), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
    }
    for (args, expected) in [
        (vec!["--offset", "24"], "--offset 24 is past the last row"),
        (vec!["--base-url", "localhost:1"], "must be http or https"),
        (vec!["-i"], "-i steps through rollouts at a terminal"),
        (
            vec!["--pass-threshold", "NaN"],
            "--pass-threshold must be a finite number",
        ),
    ] {
        let run = run_test(&llm, &calc_jsonl(), &args);
        let stderr = text(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // No key anywhere for the default provider.
    let run = Command::new(host_binary())
        .args(["test", "--plugin"])
        .arg(plugin("calc"))
        .arg("-d")
        .arg(calc_jsonl())
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(
        text(&run.stderr),
        "rollout-host test: no API key for openai: pass --api-key or set OPENAI_API_KEY\n"
    );
    assert_eq!(llm.requests().len(), 0, "no LLM call was made");
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_cleanly_and_writes_the_finished_rows() {
    let llm = MockLlm::start(Behaviour::Slow(Duration::from_millis(300))).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let _serial = Serial::acquire();
    let mut child = test_command(&llm, &calc_jsonl(), &["-o", out.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Two rows take ~1.2 s; stop in the third.
    let deadline = Instant::now() + Duration::from_secs(30);
    while llm.requests().len() < 5 {
        assert!(Instant::now() < deadline, "the test did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let results = results(&out);
    let summary = &results["summary"];
    assert_eq!(summary["interrupted"], json!(true));
    assert_eq!(summary["total"], json!(2), "{summary}");
    assert_eq!(summary["not_run"], json!(22));
    assert_eq!(results["results"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_rows_in_flight_are_at_least_six_times_faster_than_one() {
    let llm = MockLlm::start(Behaviour::Slow(Duration::from_millis(50))).await;
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("200.jsonl");
    let rows: Vec<_> = (0..200).map(|i| calc_rows()[i % 24].clone()).collect();
    std::fs::write(&dataset, datasets::jsonl_text(&rows)).unwrap();
    // The runs' own time (the summary's), without the plugin's compilation
    // at start-up, which both pay alike; wall time is printed beside it.
    let mut times = Vec::new();
    for concurrency in ["1", "8"] {
        let out = dir.path().join(format!("c{concurrency}.json"));
        let started = Instant::now();
        let run = run_test(
            &llm,
            &dataset,
            &["-q", "-c", concurrency, "-o", out.to_str().unwrap()],
        );
        let wall = started.elapsed().as_secs_f64();
        assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
        let runs = results(&out)["summary"]["total_duration_ms"]
            .as_f64()
            .unwrap()
            / 1000.0;
        println!(
            "--concurrency {concurrency}: 200 rows in {runs:.2} s ({wall:.2} s with start-up)"
        );
        times.push(runs);
    }
    let ratio = times[0] / times[1];
    println!("200 rows, 2 LLM calls each at 50 ms: --concurrency 8 is {ratio:.1}x faster than 1");
    assert!(ratio >= 6.0, "only {ratio:.1}x faster: {times:?}");
}

/// A program running in a pseudo-terminal: what it wrote, and keys to send.
struct Terminal {
    master: std::fs::File,
    screen: Arc<Mutex<String>>,
    /// Where the next `expect` starts looking.
    seen: usize,
}

impl Terminal {
    /// Starts `command` with a new pty as its controlling terminal and
    /// stdin, stdout and stderr.
    fn spawn(mut command: Command) -> (Terminal, std::process::Child) {
        use std::io::Read;
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        let (mut master, mut slave) = (0, 0);
        let winsize = libc::winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &winsize,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        command
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = command.spawn().expect("start in a pty");
        drop(command);
        let master = std::fs::File::from(master);
        let mut reader = master.try_clone().unwrap();
        let screen = Arc::new(Mutex::new(String::new()));
        let sink = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the program has exited and the pty is closed.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        (
            Terminal {
                master,
                screen,
                seen: 0,
            },
            child,
        )
    }

    /// Waits until the program writes `text` (after what was seen before).
    fn expect(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen.lock().unwrap().clone();
            if let Some(at) = screen[self.seen..].find(text) {
                let shown = screen[self.seen..self.seen + at + text.len()].to_owned();
                self.seen += at + text.len();
                return shown;
            }
            assert!(
                Instant::now() < deadline,
                "never saw {text:?} in:\n{}",
                &screen[self.seen..]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the key prompt, then presses `key`.
    fn press(&mut self, key: &str) -> String {
        use std::io::Write;
        let shown = self.expect("quit > ");
        // The program turns off line buffering once it is waiting.
        std::thread::sleep(Duration::from_millis(150));
        self.master.write_all(key.as_bytes()).unwrap();
        shown
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn interactive_mode_steps_through_rollouts_in_a_terminal() {
    let llm = MockLlm::start(Behaviour::Calculator).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let _serial = Serial::acquire();
    let mut command = test_command(
        &llm,
        &calc_jsonl(),
        &["-i", "--row", "1", "-o", out.to_str().unwrap()],
    );
    command.env("TERM", "xterm");
    let (mut term, mut child) = Terminal::spawn(command);
    let rows = calc_rows();
    let question = rows[1]["user_prompt"].as_str().unwrap();

    let first = term.press("m");
    assert!(first.contains("== row 1 (1 of 23) =="), "{first}");
    assert!(
        first.contains("-- row 1 . LLM call 1 . 2 messages, 4 tools --"),
        "{first}"
    );
    assert!(
        first.contains("[n] next call  [c] continue  [m] messages  [t] tools  [q] quit"),
        "{first}"
    );
    // m: the messages so far.
    let messages = term.press("t");
    assert!(
        messages.contains(&format!("[1] user: {question}")),
        "{messages}"
    );
    assert!(
        messages.contains("[0] system: You are a calculator."),
        "{messages}"
    );
    // t: the plugin's tools.
    let tools = term.press("n");
    assert!(tools.contains("add: Add two numbers"), "{tools}");
    assert!(
        tools.contains("divide: Divide the first number by the second"),
        "{tools}"
    );
    assert!(
        llm.requests().is_empty() || tools.contains("LLM call"),
        "no call before n"
    );
    // n: the call is made and its reply shown; the next call waits.
    let second = term.press("c");
    assert!(second.contains("<- assistant -> subtract("), "{second}");
    assert!(
        second.contains("-- row 1 . LLM call 2 . 4 messages"),
        "{second}"
    );
    assert_eq!(llm.requests().len(), 1, "the second call waits for a key");
    // c: to the end of the row, then the next row is offered.
    let end = term.press("n");
    assert!(end.contains("row 1: OK reward 1.0"), "{end}");
    assert!(end.contains("[n] next row  [q] quit"), "{end}");
    assert_eq!(llm.requests().len(), 2);
    // The next row pauses at its first call; q quits.
    let next = term.press("q");
    assert!(next.contains("== row 2 (2 of 23) =="), "{next}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", term.screen.lock().unwrap());
    let results = results(&out);
    assert_eq!(results["summary"]["total"], json!(1));
    assert_eq!(results["results"][0]["row_index"], json!(1));
    assert_eq!(results["results"][0]["reward"], json!(1.0));
    assert_eq!(llm.requests().len(), 2, "q quit before row 2's first call");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_terminal_progress_is_a_live_bar_then_the_summary() {
    let llm = MockLlm::start(Behaviour::Slow(Duration::from_millis(100))).await;
    let _serial = Serial::acquire();
    let mut command = test_command(&llm, &calc_jsonl(), &["--limit", "6", "-c", "2"]);
    command.env("TERM", "xterm");
    let (mut term, mut child) = Terminal::spawn(command);
    term.expect("0/6 runs");
    term.expect("6/6 runs");
    let summary = term.expect("runs/s)");
    assert!(
        summary.contains("6 ran without error, 0 failed"),
        "{summary}"
    );
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let screen = term.screen.lock().unwrap().clone();
    // The bar, not a line per run.
    assert!(!screen.contains("[1/6]"), "{screen}");
}
