//! Microbenchmarks of the per-rollout hot path, in process:
//! instantiation from the pre-instance (pooling and on-demand), instantiate
//! plus `get-tools` (what an init does), and the JSON work on a 50-message
//! history that each `chat` call costs the host (as done, on the messages'
//! JSON text, and as it would cost through decoded values), and reading a
//! trainer's chat completion that carries logprobs (as done, and through
//! values).
//!
//! `cargo bench --bench micro [-- --plugin PATH]`: `--plugin` measures the
//! instantiation of another calculator build (the Python or JS one).

use rollout_host::protocol::History;
use rollout_host::runtime::{
    AllocatorChoice, CompileCache, Limits, RolloutHost, Runtime, RuntimeConfig, WitRolloutRequest,
};
use rollout_host::trainer::{chat_body, chat_fields, parse_chat_completion};
use serde_json::{Value, json};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

/// Runs `f` for `iters` iterations after a tenth as many warm-up ones and
/// returns the mean time per iteration.
async fn time<F, Fut>(iters: u32, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..iters / 10 {
        f().await;
    }
    let started = Instant::now();
    for _ in 0..iters {
        f().await;
    }
    started.elapsed() / iters
}

fn us(d: Duration) -> String {
    format!("{:.2} us", d.as_secs_f64() * 1e6)
}

fn history(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| match i % 3 {
            0 => json!({"role": "user", "content": format!("Question {i}: what is {i} plus {i}? Please show your work.")}),
            1 => json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": format!("call_{i}"), "type": "function", "function": {"name": "add", "arguments": format!("{{\"a\": {i}, \"b\": {i}}}")}}]}),
            _ => json!({"role": "tool", "content": format!("{}", 2 * i), "tool_call_id": format!("call_{}", i - 1)}),
        })
        .collect()
}

fn main() {
    // `cargo bench` appends `--bench`.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (plugin_path, iters) = match args.as_slice() {
        [] => (common::build_calc(), 20_000),
        [flag, path] if flag == "--plugin" => (std::path::PathBuf::from(path), 500),
        _ => {
            eprintln!("usage: cargo bench --bench micro [-- --plugin PATH]");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let request = WitRolloutRequest {
            rollout_id: "bench".into(),
            messages: json!([{"role": "user", "content": "What is 2 + 3?"}]).to_string(),
            completion_params: "{}".into(),
            tool_server_url: None,
            max_turns: 10,
            max_tokens_total: 8192,
            metadata: json!({"ground_truth": "5"}).to_string(),
        };
        println!("rollout-host micro benchmarks ({})", plugin_path.display());
        // Pooling from the warm pool (pages kept resident), pooling from
        // the main pool (pages given back), on-demand.
        for (allocator, warm_slots, pool) in [
            (AllocatorChoice::Pooling, 1000, "warm"),
            (AllocatorChoice::Pooling, 0, "main"),
            (AllocatorChoice::OnDemand, 0, ""),
        ] {
            let runtime = Arc::new(
                Runtime::new(RuntimeConfig {
                    limits: Limits::default(),
                    instance_slots: 1000,
                    allocator,
                    warm_slots,
                    compile_cache: CompileCache::default_dir()
                        .and_then(|dir| CompileCache::open(&dir).ok()),
                })
                .expect("engine"),
            );
            let plugin = runtime.load(&plugin_path).await.expect("load the plugin");
            let instantiate = time(iters, || async {
                black_box(
                    plugin
                        .instantiate(RolloutHost::detached("bench"))
                        .await
                        .unwrap(),
                );
            })
            .await;
            let start = time(iters, || async {
                black_box(
                    plugin
                        .start(RolloutHost::detached("bench"), &request)
                        .await
                        .unwrap(),
                );
            })
            .await;
            let config = format!("{allocator:?} {pool}");
            println!(
                "  instantiate from pre-instance ({config:<14}) {}",
                us(instantiate)
            );
            println!(
                "  instantiate + get-tools ({config:<14})       {}",
                us(start)
            );
        }

        let messages = history(50);
        let text = serde_json::to_string(&messages).unwrap();
        let params = json!({"temperature": 0.7, "max_tokens": 256})
            .as_object()
            .unwrap()
            .clone();
        let fields = chat_fields(&params, "bench");
        // What a chat call does with the guest's history. The previous call
        // sent 48 messages and got the 49th as its reply; this one sends all
        // 50: the known part is one byte compare, the rest is split, and the
        // text goes into the trainer request as is.
        let previous_text = serde_json::to_string(&messages[..48]).unwrap();
        let reply = serde_json::value::to_raw_value(&messages[48]).unwrap();
        let mut history = History::default();
        history.extend(&previous_text, 48, reply.clone());
        assert_eq!(history.check_next(&text), Ok(50));
        let check = time(20_000, || async {
            black_box(history.check_next(black_box(&text)).unwrap());
        })
        .await;
        let keep = time(20_000, || async {
            let mut h = History::default();
            h.extend(black_box(&text), 50, reply.clone());
            black_box(h);
        })
        .await;
        let body = time(20_000, || async {
            black_box(chat_body(black_box(&text), &fields));
        })
        .await;
        // A guest whose encoder writes the known messages differently from
        // last time: every message is split and compared as values.
        let spaced = serde_json::to_string_pretty(&messages).unwrap();
        assert_eq!(history.check_next(&spaced), Ok(50));
        let check_spaced = time(2_000, || async {
            black_box(history.check_next(black_box(&spaced)).unwrap());
        })
        .await;
        // The same work done by decoding the history into values.
        let parse = time(20_000, || async {
            black_box(serde_json::from_str::<Vec<Value>>(black_box(&text)).unwrap());
        })
        .await;
        let compare_values = time(20_000, || async {
            black_box(black_box(&messages[..49]) == black_box(&messages[..49]));
        })
        .await;
        let body_values = time(20_000, || async {
            let text = serde_json::to_string(black_box(&messages)).unwrap();
            black_box(chat_body(&text, &fields));
        })
        .await;
        println!(
            "  50-message history ({} bytes of JSON), per chat call:",
            text.len()
        );
        println!(
            "    append-only check (49 known, split the rest) {}",
            us(check)
        );
        println!(
            "    keep it for the next call                    {}",
            us(keep)
        );
        println!(
            "    write the chat request body                  {}",
            us(body)
        );
        println!(
            "    total                                        {}",
            us(check + keep + body)
        );
        println!(
            "    check when the guest wrote it differently    {}",
            us(check_spaced)
        );
        println!("  the same through JSON values (decode, compare, re-encode):");
        println!(
            "    decode                                       {}",
            us(parse)
        );
        println!(
            "    append-only check                            {}",
            us(compare_values)
        );
        println!(
            "    encode                                       {}",
            us(body_values)
        );
        println!(
            "    total                                        {}",
            us(parse + compare_values + body_values)
        );

        // A trainer's answer with logprobs of a 256-token completion.
        let completion = chat_completion(256);
        let read = time(5_000, || async {
            black_box(parse_chat_completion(black_box(&completion)).unwrap());
        })
        .await;
        let read_values = time(5_000, || async {
            let mut v: Value = serde_json::from_slice(black_box(&completion)).unwrap();
            let choice = &mut v["choices"][0];
            black_box(serde_json::to_string(&choice["message"].take()).unwrap());
            black_box(serde_json::to_string(&choice["logprobs"].take()).unwrap());
        })
        .await;
        println!(
            "  a chat completion with logprobs of 256 tokens ({} bytes), per chat call:",
            completion.len()
        );
        println!("    read the fields the host needs            {}", us(read));
        println!(
            "    decode into values, re-encode the parts   {}",
            us(read_values)
        );
    });
}

/// An OpenAI chat completion whose choice carries `n` tokens of logprobs
/// with 5 alternatives each, as vLLM returns them.
fn chat_completion(n: usize) -> Vec<u8> {
    let token = |i: usize| {
        json!({"token": format!("tok{i}"), "logprob": -0.125 * (i % 7) as f64,
               "bytes": [116, 111, 107], "top_logprobs": (0..5).map(|k| json!(
                   {"token": format!("alt{k}"), "logprob": -1.5 - k as f64, "bytes": [97]})).collect::<Vec<_>>()})
    };
    serde_json::to_vec(&json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "default",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "The answer is 42."},
                     "logprobs": {"content": (0..n).map(token).collect::<Vec<_>>()}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": n, "total_tokens": 100 + n}
    }))
    .unwrap()
}
