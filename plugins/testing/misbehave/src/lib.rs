//! A plugin for the host's tests: `metadata.mode` picks how it misbehaves
//! (spins, allocates or recurses without bound, panics, skips or repeats
//! `complete`, abuses host calls, tries to escape the sandbox, sleeps,
//! floods stdout) or does a known amount of work (`burn`).
//! `echo` answers after one chat call; any other mode is the calculator.

#[path = "../../../calc/src/agent.rs"]
mod calculator;

use rollout_guest_sdk::bindings::osmosis::rollout::{host, types as wit};
use rollout_guest_sdk::{
    Agent, AgentError, Map, RolloutContext, RolloutRequest, ToolDefinition, Value, export_agent,
    json,
};
use std::hint::black_box;

#[derive(Default)]
struct Misbehave;

fn mode(request: &RolloutRequest) -> &str {
    request
        .metadata
        .get("mode")
        .and_then(Value::as_str)
        .unwrap_or("")
}

impl Agent for Misbehave {
    fn name(&self) -> String {
        "misbehave".into()
    }

    fn tools(&self, request: &RolloutRequest) -> Vec<ToolDefinition> {
        match mode(request) {
            "trap-in-get-tools" => panic!("misbehave: trap in get-tools"),
            "spin-in-get-tools" => spin(),
            "echo" => Vec::new(),
            "bad-tool-schema" => vec![ToolDefinition {
                name: "listy".into(),
                description: "parameters that are not a JSON object".into(),
                parameters: json!(["a", "b"]),
            }],
            // The calculator's tools, told apart from the calculator
            // plugin's own (a second build with other descriptions).
            _ => calculator::Calculator
                .tools(request)
                .into_iter()
                .map(|t| ToolDefinition {
                    description: format!("{} (misbehave's copy)", t.description),
                    ..t
                })
                .collect(),
        }
    }

    fn run(&self, ctx: &mut RolloutContext) -> Result<(), AgentError> {
        let request = ctx.request().clone();
        let mut messages = request.messages.clone();
        match mode(&request) {
            "trap" => panic!("misbehave: deliberate trap"),
            "spin" => spin(),
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            "recurse" => {
                black_box(recurse(0));
                Ok(())
            }
            "big-log" => {
                let mut bytes = Vec::with_capacity((100 << 20) + 16);
                bytes.extend_from_slice(b"{\"blob\": \"");
                bytes.resize(bytes.len() + (100 << 20), b'x');
                bytes.extend_from_slice(b"\"}");
                let data = String::from_utf8(bytes).map_err(|e| e.to_string())?;
                host::log_event("big", &data);
                ctx.complete(&messages, "stop", None)
            }
            "burn" => {
                // A fixed amount of work: `iterations` rounds of a hash.
                let iterations = number(&request, "iterations");
                let mut h = 0xcbf2_9ce4_8422_2325u64;
                for i in 0..iterations {
                    h = black_box((h ^ i).wrapping_mul(0x0100_0000_01b3));
                }
                ctx.complete_with(&messages, "stop", Some(1.0), one("hash", json!(h)))
            }
            "print" => {
                println!("misbehave: hello from {}", request.rollout_id);
                eprintln!("misbehave: on stderr");
                ctx.complete(&messages, "stop", Some(1.0))
            }
            "print-flood" => {
                // `mib` MiB of 100-byte lines on stdout, then a normal end.
                use std::io::Write;
                let line = [b"x".repeat(99), b"\n".to_vec()].concat();
                let chunk = line.repeat(10_486); // ~1 MiB
                let mut out = std::io::stdout();
                for _ in 0..number(&request, "mib") {
                    out.write_all(&chunk).map_err(|e| e.to_string())?;
                }
                out.flush().map_err(|e| e.to_string())?;
                ctx.complete(&messages, "stop", Some(1.0))
            }
            "sleep" => loop {
                std::thread::sleep(std::time::Duration::from_millis(50));
            },
            "chat-forever" => loop {
                let reply = ctx.chat(&messages)?;
                messages.push(reply.message);
            },
            "escape" => {
                let report = escape_attempts();
                ctx.complete_with(&messages, "stop", None, report)
            }
            "malformed-host-calls" => {
                let mut report = Map::new();
                let chat = host::chat(&wit::ChatRequest {
                    messages: "not json".into(),
                    params: None,
                });
                report.insert("chat".into(), json!(format!("{:?}", chat.err())));
                let chat = host::chat(&wit::ChatRequest {
                    messages: "[]".into(),
                    params: Some("[1]".into()),
                });
                report.insert("params".into(), json!(format!("{:?}", chat.err())));
                let complete = host::complete(&wit::Completion {
                    status: wit::RolloutStatus::Completed,
                    final_messages: "{".into(),
                    finish_reason: "stop".into(),
                    error_message: None,
                    reward: Some(f64::NAN),
                    tool_metrics: wit::ToolMetrics {
                        num_tool_calls: 0,
                        tool_latency_ms: 0.0,
                    },
                    extra_fields: None,
                });
                report.insert("complete".into(), json!(format!("{:?}", complete.err())));
                ctx.complete_with(&messages, "stop", None, report)
            }
            "no-complete" => Ok(()),
            "error" => Err("misbehave: deliberate error".into()),
            "complete-twice" => {
                ctx.complete(&messages, "stop", Some(1.0))?;
                let second = ctx.complete(&messages, "stop", Some(0.0));
                // Report what the host said about the second call.
                let status = match second {
                    Err(e) => format!("refused: {e}"),
                    Ok(()) => "accepted".to_owned(),
                };
                ctx.log_event("second_complete", json!({"status": status}));
                Ok(())
            }
            "chat-after-complete" => {
                ctx.complete(&messages, "stop", None)?;
                let status = match ctx.chat(&messages) {
                    Err(e) => format!("refused: {e}"),
                    Ok(_) => "accepted".to_owned(),
                };
                ctx.log_event("chat_after_complete", json!({"status": status}));
                Ok(())
            }
            "rewrite-history" => {
                let reply = ctx.chat(&messages)?;
                messages.push(reply.message);
                // Drop the history and start over: not append-only.
                let rewritten = vec![json!({"role": "user", "content": "something else"})];
                ctx.chat(&rewritten)?;
                ctx.complete(&rewritten, "stop", None)
            }
            "echo" => {
                // Completes with what the chat call returned, for the
                // trainer to check.
                let reply = ctx.chat(&messages)?;
                let mut seen = Map::new();
                seen.insert("finish_reason".into(), json!(reply.finish_reason));
                seen.insert(
                    "usage".into(),
                    json!([
                        reply.usage.prompt_tokens,
                        reply.usage.completion_tokens,
                        reply.usage.total_tokens
                    ]),
                );
                seen.insert("token_ids".into(), json!(reply.token_ids));
                seen.insert("prompt_token_ids".into(), json!(reply.prompt_token_ids));
                seen.insert("logprobs_json".into(), json!(reply.logprobs_json));
                seen.insert("logprobs".into(), json!(reply.logprobs()));
                let finish_reason = reply.finish_reason.clone();
                messages.push(reply.message);
                ctx.complete_with(&messages, &finish_reason, None, seen)
            }
            _ => calculator::Calculator.run(ctx),
        }
    }
}

/// `metadata[key]` as a count (0 when absent).
fn number(request: &RolloutRequest, key: &str) -> u64 {
    request
        .metadata
        .get(key)
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

fn one(key: &str, value: Value) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert(key.into(), value);
    map
}

fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Recursion that only uses the wasm stack (an indirect call per frame, no
/// locals in linear memory), so it hits the host's wasm stack limit rather
/// than the guest's own shadow stack.
fn recurse(depth: u64) -> u64 {
    let next: fn(u64) -> u64 = black_box(recurse);
    next(depth + 1).wrapping_add(depth)
}

/// Tries every ambient capability a sandbox must not grant; each entry says
/// what the guest got.
fn escape_attempts() -> Map<String, Value> {
    use std::io::Read;
    let outcome = |r: Result<String, String>| match r {
        Ok(v) => json!(format!("allowed: {v}")),
        Err(e) => json!(format!("denied: {e}")),
    };
    let mut report = Map::new();
    report.insert(
        "read_file".into(),
        outcome(std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())),
    );
    report.insert(
        "list_dir".into(),
        outcome(
            std::fs::read_dir("/")
                .map(|d| d.count().to_string())
                .map_err(|e| e.to_string()),
        ),
    );
    report.insert(
        "write_file".into(),
        outcome(
            std::fs::write("/tmp/escaped", b"x")
                .map(|_| "wrote".to_owned())
                .map_err(|e| e.to_string()),
        ),
    );
    report.insert(
        "env_var".into(),
        outcome(std::env::var("PATH").map_err(|e| e.to_string())),
    );
    let count = |n: usize| {
        if n == 0 {
            Err("none".into())
        } else {
            Ok(n.to_string())
        }
    };
    report.insert("env_vars".into(), outcome(count(std::env::vars().count())));
    report.insert("args".into(), outcome(count(std::env::args().count())));
    report.insert(
        "tcp".into(),
        outcome(
            std::net::TcpStream::connect("127.0.0.1:22")
                .map(|_| "connected".to_owned())
                .map_err(|e| e.to_string()),
        ),
    );
    report.insert(
        "udp".into(),
        outcome(
            std::net::UdpSocket::bind("0.0.0.0:0")
                .map(|_| "bound".to_owned())
                .map_err(|e| e.to_string()),
        ),
    );
    let mut input = Vec::new();
    report.insert(
        "stdin".into(),
        outcome(match std::io::stdin().read_to_end(&mut input) {
            Ok(0) => Err("empty".into()),
            Ok(n) => Ok(format!("{n} bytes")),
            Err(e) => Err(e.to_string()),
        }),
    );
    report
}

export_agent!(Misbehave);
