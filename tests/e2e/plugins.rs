//! Plugins that misbehave, plugins that do not load, and the debug log.

use crate::harness::*;
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn trap_and_missing_complete_each_get_one_error_callback() {
    let trainer = Trainer::calculator("add", 1.0, 1.0, "2").await;
    let server = Server::start("misbehave", &[]);

    assert_eq!(
        server
            .init(&misbehave_body("m-trap", &trainer, "trap"))
            .await
            .0,
        202
    );
    let done = trainer.single_completion("m-trap").await;
    assert_eq!(done["status"], "ERROR");
    assert_eq!(done["finish_reason"], "error");
    let msg = done["error_message"].as_str().unwrap();
    let label = build_label("misbehave", "misbehave");
    assert!(
        msg.starts_with(&format!("plugin {label} trapped in run: ")) && msg.contains("unreachable"),
        "{msg}"
    );
    assert!(
        msg.contains(" in <misbehave::Misbehave as rollout_guest_sdk::Agent>::run (panicked at ")
            && !msg.contains("_RNv"),
        "names the plugin's own function, demangled: {msg}"
    );
    assert!(
        msg.contains("deliberate trap"),
        "the guest's panic message is reported: {msg}"
    );

    assert_eq!(
        server
            .init(&misbehave_body("m-none", &trainer, "no-complete"))
            .await
            .0,
        202
    );
    let done = trainer.single_completion("m-none").await;
    assert_eq!(done["status"], "ERROR");
    assert_eq!(
        done["error_message"],
        format!("plugin {label} returned without calling complete")
    );

    assert_eq!(
        server
            .init(&misbehave_body("m-err", &trainer, "error"))
            .await
            .0,
        202
    );
    let done = trainer.single_completion("m-err").await;
    assert_eq!(
        done["error_message"],
        format!("plugin {label} run failed: misbehave: deliberate error")
    );

    // The server keeps serving.
    assert_eq!(
        server
            .init(&misbehave_body("m-ok", &trainer, "echo"))
            .await
            .0,
        202
    );
    assert_eq!(
        trainer.single_completion("m-ok").await["status"],
        "COMPLETED"
    );
    assert_eq!(server.get("/health", None).await.0, 200);
    assert!(
        server.log().contains("deliberate trap"),
        "guest stderr reaches the host log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_replies_reach_the_plugin_whole() {
    let logprobs = json!({"content": [
        {"token": "hi", "logprob": -0.25, "bytes": [104, 105], "top_logprobs": [{"token": "yo", "logprob": -1.5}]}
    ]});
    let trainer = Trainer::start({
        let logprobs = logprobs.clone();
        move |body, _| {
            if body["rollout_id"] == "m-bare" {
                return (200, completion(json!({"role": "assistant", "content": "ok"}), "stop", 1));
            }
            (200, json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": null},
                     "finish_reason": "length", "token_ids": [7, 8, 9], "logprobs": logprobs},
                    {"index": 1, "message": {"role": "assistant", "content": "other"}, "finish_reason": "stop"}
                ],
                "prompt_token_ids": [1, 2, 3],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
            }))
        }
    })
    .await;
    let server = Server::start("misbehave", &[]);
    for id in ["m-full", "m-bare"] {
        let (status, answer) = server.init(&misbehave_body(id, &trainer, "echo")).await;
        assert_eq!(status, 202, "{answer}");
    }

    let done = trainer.single_completion("m-full").await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let seen = &done["extra_fields"];
    assert_eq!(seen["finish_reason"], "length");
    assert_eq!(seen["usage"], json!([3, 3, 6]));
    assert_eq!(seen["token_ids"], json!([7, 8, 9]));
    assert_eq!(seen["prompt_token_ids"], json!([1, 2, 3]));
    assert_eq!(seen["logprobs"], logprobs);
    let text: Value = serde_json::from_str(seen["logprobs_json"].as_str().unwrap()).unwrap();
    assert_eq!(text, logprobs);
    assert_eq!(
        done["final_messages"].as_array().unwrap().last().unwrap(),
        &json!({"role": "assistant", "content": "hi", "refusal": null})
    );
    assert_eq!(done["finish_reason"], "length");

    let bare = trainer.single_completion("m-bare").await;
    assert_eq!(bare["status"], "COMPLETED", "{bare}");
    let seen = &bare["extra_fields"];
    assert_eq!(seen["finish_reason"], "stop");
    for absent in ["token_ids", "prompt_token_ids", "logprobs", "logprobs_json"] {
        assert_eq!(seen[absent], Value::Null, "{absent}: {seen}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn get_tools_trap_fails_the_init_and_frees_the_key() {
    let trainer = Trainer::calculator("add", 1.0, 1.0, "2").await;
    let server = Server::start("misbehave", &[]);
    let (status, answer) = server
        .init(&misbehave_body("m-gt", &trainer, "trap-in-get-tools"))
        .await;
    assert_eq!(status, 500, "{answer}");
    let label = build_label("misbehave", "misbehave");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("plugin {label} trapped in get-tools: ")),
        "{answer}"
    );
    // A tool schema that is not a JSON object fails the init too.
    let (status, answer) = server
        .init(&misbehave_body("m-schema", &trainer, "bad-tool-schema"))
        .await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(
        answer["detail"],
        format!("plugin {label} returned tool 'listy' whose parameters are not a JSON object")
    );
    // Same key, now a working request: the failed init was forgotten.
    let (status, _) = server.init(&misbehave_body("m-gt", &trainer, "echo")).await;
    assert_eq!(status, 202);
    assert_eq!(
        trainer.single_completion("m-gt").await["status"],
        "COMPLETED"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_call_misuse_is_an_error_not_a_crash() {
    let trainer = Trainer::calculator("add", 1.0, 1.0, "2").await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("misbehave", &["--log", dir.path().to_str().unwrap()]);
    for (id, mode) in [
        ("m-twice", "complete-twice"),
        ("m-after", "chat-after-complete"),
    ] {
        assert_eq!(
            server.init(&misbehave_body(id, &trainer, mode)).await.0,
            202
        );
        let done = trainer.single_completion(id).await;
        assert_eq!(
            done["status"], "COMPLETED",
            "{mode}: the first complete stands"
        );
    }
    assert_eq!(
        trainer
            .completions()
            .iter()
            .find(|c| c.body["rollout_id"] == "m-twice")
            .unwrap()
            .body["reward"],
        1.0
    );
    let log = read_logs(dir.path());
    assert!(
        log.contains(r#""status":"refused: complete failed: the rollout was already completed""#),
        "{log}"
    );
    assert!(
        log.contains("refused: chat failed: invalid chat request: chat called after complete"),
        "{log}"
    );

    assert_eq!(
        server
            .init(&misbehave_body("m-rewrite", &trainer, "rewrite-history"))
            .await
            .0,
        202
    );
    let done = trainer.single_completion("m-rewrite").await;
    assert_eq!(done["status"], "ERROR");
    assert!(
        done["error_message"]
            .as_str()
            .unwrap()
            .contains("not append-only"),
        "{done}"
    );
    assert_eq!(
        trainer.chats_for("m-rewrite").len(),
        1,
        "the rewritten history never reached the trainer"
    );
}

fn read_logs(dir: &std::path::Path) -> String {
    let mut text = String::new();
    for run in std::fs::read_dir(dir).unwrap() {
        for file in std::fs::read_dir(run.unwrap().path()).unwrap() {
            text.push_str(&std::fs::read_to_string(file.unwrap().path()).unwrap());
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn debug_log_is_written_per_rollout_and_stays_inside_its_directory() {
    let trainer = Trainer::calculator("add", 5.0, 3.0, "8").await;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("logs");
    let server = Server::start("calc", &["--log", dir.to_str().unwrap()]);
    assert_eq!(server.init(&init_body("log-1", &trainer)).await.0, 202);
    assert_eq!(server.init(&init_body("../../x", &trainer)).await.0, 202);
    trainer.single_completion("log-1").await;
    trainer.single_completion("../../x").await;

    let runs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "one directory per server start");
    let start: u64 = runs[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .expect("named by unix time");
    assert!(start > 1_600_000_000);
    let text = std::fs::read_to_string(runs[0].join("log-1.jsonl")).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "pre_llm",
            "llm_response",
            "tool_results",
            "pre_llm",
            "llm_response",
            "rollout_complete"
        ]
    );
    assert!(events.iter().all(|e| e["rollout_id"] == "log-1"));
    assert_eq!(events[5]["reward"], 1.0);

    // The hostile id wrote inside the run directory, encoded, and nowhere else.
    let mut files: Vec<String> = std::fs::read_dir(&runs[0])
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["%2E%2E%2F%2E%2E%2Fx.jsonl", "log-1.jsonl"]);
    let mut everything = Vec::new();
    walk(root.path(), &mut everything);
    assert_eq!(
        everything.len(),
        2,
        "nothing else under the temp root: {everything:?}"
    );
    assert!(!root.path().parent().unwrap().join("x.jsonl").exists());
}

fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out)
        } else {
            out.push(path)
        }
    }
}

/// Runs the binary to its end: exit code, stderr, stdout.
fn run_cli_output(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(host_binary())
        .args(args)
        .env_remove("RUST_LOG")
        .env("ROLLOUT_CACHE_DIR", compile_cache())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn run_cli(args: &[&str]) -> (i32, String) {
    let (code, stderr, _) = run_cli_output(args);
    (code, stderr)
}

fn last_line(stderr: &str) -> &str {
    stderr.lines().last().unwrap_or("")
}

#[test]
fn validate_checks_a_plugin_without_serving() {
    let calc = plugin("calc");
    let (code, stderr, stdout) =
        run_cli_output(&["--plugin", calc.to_str().unwrap(), "--validate"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!(
            "{}: agent \"calculator\" with 4 tool(s): add, subtract, multiply, divide",
            calc.display()
        )
    );
    // The sample request has no metadata, so misbehave (no mode) offers the
    // calculator's tools under its own name. Tools are checked as an init
    // checks them (get_tools_trap_fails_the_init_and_frees_the_key).
    let misbehave = plugin("misbehave");
    let (code, _, stdout) =
        run_cli_output(&["--plugin", misbehave.to_str().unwrap(), "--validate"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("agent \"misbehave\" with 4 tool(s)"),
        "{stdout}"
    );
}

#[test]
fn plugins_that_do_not_fit_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    // A core module (no component layer): `(module)`.
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let text = dir.path().join("text.wasm");
    std::fs::write(&text, b"hello").unwrap();
    let wrong = plugin("wrong-world");
    let cases = [
        (
            core.to_str().unwrap().to_owned(),
            "is not a WebAssembly component",
        ),
        (
            text.to_str().unwrap().to_owned(),
            "is not a WebAssembly component",
        ),
        (
            wrong.to_str().unwrap().to_owned(),
            "does not export `osmosis:rollout/agent@0.1.0`",
        ),
        (
            dir.path().join("missing.wasm").to_str().unwrap().to_owned(),
            "cannot read plugin",
        ),
    ];
    for (path, expected) in cases {
        // Serving and `--validate` refuse it the same way.
        for extra in ["--port", "--validate"] {
            let mut args = vec!["--plugin", &path, "--host", "127.0.0.1", extra];
            if extra == "--port" {
                args.push("0");
            }
            let (code, stderr) = run_cli(&args);
            assert_eq!(code, 1, "{path} {extra}");
            let line = last_line(&stderr);
            assert!(
                line.starts_with("rollout-host: ") && line.contains(expected),
                "{path} {extra}: {stderr}"
            );
        }
    }
    let (code, stderr) = run_cli(&["--plugin", "x.wasm", "--max-concurrent", "0"]);
    assert_eq!(code, 2, "bad flags are a usage error: {stderr}");
    let (code, _) = run_cli(&["--help"]);
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_world_lists_what_the_component_exports() {
    let (_, stderr) = tokio::task::spawn_blocking(|| {
        run_cli(&["--plugin", plugin("wrong-world").to_str().unwrap()])
    })
    .await
    .unwrap();
    assert!(
        last_line(&stderr).contains("osmosis:rollout/agent@0.0.1"),
        "{stderr}"
    );
    let _ = Duration::ZERO;
}

/// The calculator built by `cargo component build` (wasm32-wasip1 plus the
/// preview1 adapter) serves like the wasm32-wasip2 build. Needs
/// `cargo install cargo-component`; says so and passes without it.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_built_with_cargo_component_serves_too() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let installed = Command::new(&cargo)
        .args(["component", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        installed,
        "cargo-component is not installed: ./test.sh installs the pinned version \
         (or: cargo install cargo-component --version 0.21.1 --locked)"
    );
    let plugins = repo_root().join("plugins");
    let built = tokio::task::spawn_blocking(move || {
        Command::new(cargo)
            .args(["component", "build", "--release", "--manifest-path"])
            .arg(plugins.join("calc/Cargo.toml"))
            .env("CARGO_TARGET_DIR", plugins.join("target"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let wasm = repo_root().join("plugins/target/wasm32-wasip1/release/calc.wasm");
    let trainer = Trainer::calculator("add", 5.0, 3.0, "8").await;
    let server = Server::start_path(&wasm, &[]);
    assert_eq!(server.init(&init_body("cc-1", &trainer)).await.0, 202);
    let done = trainer.single_completion("cc-1").await;
    assert_eq!(
        (done["status"].as_str(), done["reward"].as_f64()),
        (Some("COMPLETED"), Some(1.0)),
        "{done}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_loads_a_known_build_from_the_compile_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cache_arg = cache.to_str().unwrap();
    let trainer = Trainer::calculator("add", 5.0, 3.0, "8").await;
    // Start-up to the first /health 200: compiling, then three restarts
    // from the cache.
    let mut starts = Vec::new();
    for (i, expected) in [
        "plugin compiled",
        "plugin loaded from the compile cache",
        "plugin loaded from the compile cache",
        "plugin loaded from the compile cache",
    ]
    .into_iter()
    .enumerate()
    {
        let mut server = Server::start("calc", &["--cache-dir", cache_arg]);
        let (status, _) = server.get("/health", None).await;
        assert_eq!(status, 200);
        starts.push(server.spawned.elapsed());
        let (status, _) = server.init(&init_body(&format!("r-{i}"), &trainer)).await;
        assert_eq!(status, 202);
        server.terminate();
        let log = server.log();
        let line = log
            .lines()
            .find(|l| l.contains("plugin compiled") || l.contains("from the compile cache"))
            .unwrap_or_else(|| panic!("no load line:\n{log}"))
            .to_owned();
        assert!(line.contains(expected), "{line}");
    }
    let mut warm = starts[1..].to_vec();
    warm.sort();
    println!(
        "start-up to the first /health: compiling {:?}, from the cache {warm:?}",
        starts[0]
    );
    // The median of three, so one restart that a busy neighbour held up
    // does not decide it.
    assert!(
        warm[1] < std::time::Duration::from_millis(100),
        "from the cache, the first /health took {warm:?}"
    );
    // One private entry per build, beside its sha256.
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(
        entries[0].extension().is_some_and(|x| x == "cwasm"),
        "{entries:?}"
    );
    for entry in &entries {
        let mode = std::fs::metadata(entry).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A truncated entry is not trusted: compiled again, with a warning.
    let bytes = std::fs::read(&entries[0]).unwrap();
    std::fs::write(&entries[0], &bytes[..bytes.len() / 2]).unwrap();
    let server = Server::start("calc", &["--cache-dir", cache_arg]);
    let log = server.log();
    assert!(
        log.contains("compile-cache entry not used; compiling again"),
        "{log}"
    );
    assert!(
        log.contains("does not match the sha256 written with it"),
        "{log}"
    );
    assert!(log.contains("plugin compiled"), "{log}");
    drop(server);
    assert_eq!(
        std::fs::read(&entries[0]).unwrap(),
        bytes,
        "rewritten whole"
    );
    // --no-cache compiles and writes nothing.
    let empty = dir.path().join("unused");
    let server = Server::start(
        "calc",
        &["--cache-dir", empty.to_str().unwrap(), "--no-cache"],
    );
    assert!(server.log().contains("plugin compiled"));
    assert!(!empty.exists());
}
