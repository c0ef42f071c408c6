//! Deployments: several agents on one server, each under
//! `/deployments/NAME/`, swapped on its own (admin API, SIGHUP), every
//! trajectory naming the build that ran it.

use crate::harness::*;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "admin-s3cret";

async fn init_at(server: &Server, deployment: &str, body: &Value) -> (u16, Value) {
    init_at_with(server, deployment, body, None).await
}

/// An init for `deployment`, with `key` as its bearer token if given.
async fn init_at_with(
    server: &Server,
    deployment: &str,
    body: &Value,
    key: Option<&str>,
) -> (u16, Value) {
    let mut request = client()
        .post(format!(
            "{}/deployments/{deployment}/v1/rollout/init",
            server.url
        ))
        .json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("init");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

async fn admin(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> (u16, Value) {
    let mut request = client().request(method, format!("{}/admin/deployments{path}", server.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.body(body).send().await.expect("admin call");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

async fn upload(server: &Server, name: &str, wasm: &Path) -> (u16, Value) {
    let bytes = std::fs::read(wasm).unwrap();
    admin(
        server,
        reqwest::Method::PUT,
        &format!("/{name}"),
        bytes,
        Some(TOKEN),
    )
    .await
}

/// The build a deployment serves now, as the admin API reports it.
async fn serving(server: &Server, name: &str) -> String {
    let (status, d) = admin(
        server,
        reqwest::Method::GET,
        &format!("/{name}"),
        Vec::new(),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    d["plugin_sha256"].as_str().unwrap().to_owned()
}

/// Sends inits for `deployment` until `stop` and at least `n` were sent;
/// a 429 is retried. Records (deployment, rollout id, init answer).
async fn send(
    server: Arc<Server>,
    trainer_url: String,
    deployment: &'static str,
    sent: Arc<AtomicUsize>,
    n: usize,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<(String, String, Value)>>>,
) {
    loop {
        let i = sent.fetch_add(1, Ordering::SeqCst);
        if i >= n && stop.load(Ordering::SeqCst) {
            sent.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let id = format!("{deployment}-{i}");
        let body = json!({
            "rollout_id": id,
            "server_url": trainer_url,
            "messages": [{"role": "user", "content": "What is 5 + 3?"}],
            "completion_params": {},
            "metadata": {"ground_truth": "8"}
        });
        let answer = loop {
            let (status, answer) = init_at(&server, deployment, &body).await;
            if status == 202 {
                break answer;
            }
            assert_eq!(status, 429, "{id}: {answer}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        answers
            .lock()
            .unwrap()
            .push((deployment.to_owned(), id, answer));
    }
}

/// Two deployments (the calculator and the misbehave plugin, whose
/// calculator tools carry other descriptions) under load at 64 in flight,
/// each swapped 10 times: `default` through the admin API, `b` by file
/// and SIGHUP. Nothing is dropped, every init answer and callback name the
/// build that ran the rollout, and its tools are that build's.
#[tokio::test(flavor = "multi_thread")]
async fn two_deployments_swap_on_their_own_under_load_and_name_their_builds() {
    const PER_DEPLOYMENT: usize = 2000;
    let (calc, misbehave) = (plugin("calc"), plugin("misbehave"));
    let builds = HashMap::from([
        (sha256_file(&calc), "calculator"),
        (sha256_file(&misbehave), "misbehave"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let b_path = dir.path().join("b.wasm");
    deploy(&misbehave, &b_path);
    let trainer = Trainer::calculator("add", 5.0, 3.0, "8").await;
    let b_flag = format!("b={}", b_path.display());
    let server = Arc::new(Server::start_path(
        &calc,
        &["--plugin", &b_flag, "--admin-token", TOKEN],
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let counters = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let senders: Vec<_> = (0..64)
        .map(|k| {
            let (deployment, sent) = if k % 2 == 0 {
                ("default", counters[0].clone())
            } else {
                ("b", counters[1].clone())
            };
            tokio::spawn(send(
                server.clone(),
                trainer.url.clone(),
                deployment,
                sent,
                PER_DEPLOYMENT,
                stop.clone(),
                answers.clone(),
            ))
        })
        .collect();

    for round in 0..10 {
        let (to_default, to_b) = if round % 2 == 0 {
            (&misbehave, &calc)
        } else {
            (&calc, &misbehave)
        };
        let (status, d) = upload(&server, "default", to_default).await;
        assert_eq!(status, 200, "{d}");
        assert_eq!(d["plugin_sha256"], sha256_file(to_default));
        deploy(to_b, &b_path);
        hang_up(&server);
        let want = sha256_file(to_b);
        let deadline = Instant::now() + Duration::from_secs(30);
        while serving(&server, "b").await != want {
            assert!(
                Instant::now() < deadline,
                "b not swapped:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(server.log().matches("plugin swapped").count(), 20);

    let answers = answers.lock().unwrap().clone();
    let sent = answers.len();
    assert!(
        counters
            .iter()
            .all(|c| c.load(Ordering::SeqCst) >= PER_DEPLOYMENT),
        "sent {sent}"
    );
    let done = trainer
        .wait_completions(sent, Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        trainer.completions().len(),
        sent,
        "one callback per rollout"
    );
    let callbacks: HashMap<String, Value> = done
        .into_iter()
        .map(|c| (c.body["rollout_id"].as_str().unwrap().to_owned(), c.body))
        .collect();
    assert_eq!(callbacks.len(), sent, "no rollout called back twice");
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for (deployment, id, answer) in &answers {
        let done = &callbacks[id];
        assert_eq!(done["status"], "COMPLETED", "{done}");
        assert_eq!(done["reward"], 1.0, "{done}");
        let build = &answer["rollout_host"];
        assert_eq!(&done["extra_fields"]["rollout_host"], build, "{id}");
        assert_eq!(build["deployment"], deployment.as_str(), "{id}: {build}");
        let sha = build["plugin_sha256"].as_str().unwrap();
        let agent = builds[sha];
        assert_eq!(build["agent"], agent, "{id}: {build}");
        for tool in answer["tools"].as_array().unwrap() {
            let description = tool["function"]["description"].as_str().unwrap();
            assert_eq!(
                description.ends_with("(misbehave's copy)"),
                agent == "misbehave",
                "{id} ran {agent} but was offered {tool}"
            );
        }
        seen.insert((deployment.clone(), sha.to_owned()));
    }
    assert_eq!(seen.len(), 4, "each deployment ran both builds: {seen:?}");
}

/// Uploads that cannot serve are refused with the reason and change
/// nothing; the admin API needs its token and is off without one; a
/// deleted deployment refuses new inits and lets its rollouts finish.
#[tokio::test(flavor = "multi_thread")]
async fn broken_uploads_are_refused_and_the_running_build_keeps_serving() {
    let trainer = Trainer::slow(Duration::from_millis(100)).await;
    let server = Server::start("calc", &["--admin-token", TOKEN, "--max-upload-mib", "1"]);
    let calc_sha = sha256_file(&plugin("calc"));
    // Rollouts run through all of it.
    let mut ids = Vec::new();
    let mut start = |server: &Server, n: usize| {
        let bodies: Vec<(String, Value)> = (0..n)
            .map(|_| {
                let id = format!("kept-{}", ids.len());
                ids.push(id.clone());
                (id.clone(), init_body(&id, &trainer))
            })
            .collect();
        let url = server.url.clone();
        async move {
            for (id, body) in bodies {
                let answer = client()
                    .post(format!("{url}/v1/rollout/init"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.status(), 202, "{id}");
            }
        }
    };

    for token in [None, Some("wrong")] {
        let (status, body) = admin(&server, reqwest::Method::GET, "", Vec::new(), token).await;
        assert_eq!(
            (status, &body["detail"]),
            (401, &json!("Invalid or missing admin token"))
        );
        let (status, _) = admin(
            &server,
            reqwest::Method::PUT,
            "/default",
            std::fs::read(plugin("misbehave")).unwrap(),
            token,
        )
        .await;
        assert_eq!(status, 401);
    }
    let put = |name: &str, bytes: Vec<u8>| {
        let path = format!("/{name}");
        let server = &server;
        async move { admin(server, reqwest::Method::PUT, &path, bytes, Some(TOKEN)).await }
    };
    start(&server, 5).await;
    for (what, bytes, status, reason) in [
        (
            "not a component",
            b"hello".to_vec(),
            422,
            "is not a WebAssembly component",
        ),
        (
            "another world",
            std::fs::read(plugin("wrong-world")).unwrap(),
            422,
            "does not export `osmosis:rollout/agent@0.1.0`",
        ),
        (
            "get-tools traps",
            std::fs::read(plugin("broken-tools")).unwrap(),
            422,
            "failed its get-tools check",
        ),
        (
            "over the size cap",
            vec![0; 2 << 20],
            413,
            "larger than 1048576 bytes",
        ),
        ("empty", Vec::new(), 400, "the body is empty"),
    ] {
        let (got, body) = put("default", bytes).await;
        let detail = body["detail"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{what}: {body}");
        assert!(detail.contains(reason), "{what}: {detail}");
        start(&server, 2).await;
    }
    let (status, body) = put("no%20spaces", b"x".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(serving(&server, "default").await, calc_sha);
    assert_eq!(
        server.log().matches("plugin swapped").count(),
        0,
        "{}",
        server.log()
    );

    // A new deployment by upload, then deleted with a rollout running.
    let (status, made) = upload(&server, "extra", &plugin("misbehave")).await;
    assert_eq!((status, &made["source"]), (201, &json!("upload")), "{made}");
    let (status, _) = init_at(&server, "extra", &init_body("on-extra", &trainer)).await;
    assert_eq!(status, 202);
    let (status, deleted) = admin(
        &server,
        reqwest::Method::DELETE,
        "/extra",
        Vec::new(),
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        (status, &deleted),
        (200, &json!({"deleted": "extra", "active_rollouts": 1}))
    );
    let (status, body) = init_at(&server, "extra", &init_body("after", &trainer)).await;
    assert_eq!(
        (status, &body["detail"]),
        (404, &json!("no deployment named 'extra'"))
    );
    let done = trainer.single_completion("on-extra").await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["extra_fields"]["rollout_host"]["deployment"], "extra");
    let (_, list) = admin(&server, reqwest::Method::GET, "", Vec::new(), Some(TOKEN)).await;
    let names: Vec<&str> = list["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default"]);

    for id in &ids {
        let done = trainer.single_completion(id).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
        assert_eq!(
            done["extra_fields"]["rollout_host"]["plugin_sha256"],
            calc_sha.as_str()
        );
    }

    // Without --admin-token the API is not there.
    drop(server);
    let server = Server::start("calc", &[]);
    let (status, _) = admin(&server, reqwest::Method::GET, "", Vec::new(), Some(TOKEN)).await;
    assert_eq!(status, 404);
}

/// One deployment full (429) or running a spinning plugin does not touch
/// the other's rollouts: each has its own admission and instance pool.
#[tokio::test(flavor = "multi_thread")]
async fn one_deployments_overload_does_not_touch_the_other() {
    let trainer = Trainer::slow(Duration::from_millis(500)).await;
    let b_flag = format!("b={}", plugin("misbehave").display());
    let server = Server::start(
        "calc",
        &[
            "--plugin",
            &b_flag,
            "--max-concurrent",
            "2",
            "--max-queued",
            "0",
            "--cpu-budget",
            "1",
        ],
    );
    // b: one spinning rollout and one slow calculator fill it; a third is 429.
    assert_eq!(
        init_at(&server, "b", &misbehave_body("b-spin", &trainer, "spin"))
            .await
            .0,
        202
    );
    assert_eq!(
        init_at(&server, "b", &init_body("b-calc", &trainer))
            .await
            .0,
        202
    );
    let (status, body) = init_at(&server, "b", &init_body("b-full", &trainer)).await;
    assert_eq!(status, 429, "{body}");
    // The default deployment takes its own two meanwhile.
    for id in ["d-1", "d-2"] {
        let (status, body) = server.init(&init_body(id, &trainer)).await;
        assert_eq!(status, 202, "{id}: {body}");
    }
    for id in ["d-1", "d-2", "b-calc"] {
        let done = trainer.single_completion(id).await;
        assert_eq!(done["status"], "COMPLETED", "{id}: {done}");
    }
    let spun = trainer.single_completion("b-spin").await;
    assert!(
        spun["error_message"]
            .as_str()
            .unwrap_or_default()
            .contains("exceeded its CPU budget"),
        "{spun}"
    );
    let (_, health) = server.get("/deployments/b/health", None).await;
    assert_eq!(
        (&health["deployment"], &health["agent_loop"]),
        (&json!("b"), &json!("misbehave"))
    );
    let (status, _) = server.get("/deployments/nope/health", None).await;
    assert_eq!(status, 404);
}

/// `--config`: a deployment with its own admission, limits and API key
/// beside the command line's; the settings outlive a delete and re-upload.
#[tokio::test(flavor = "multi_thread")]
async fn a_config_file_gives_each_deployment_its_own_settings() {
    let dir = tempfile::tempdir().unwrap();
    deploy(&plugin("misbehave"), &dir.path().join("misbehave.wasm"));
    let config = dir.path().join("rollout-host.toml");
    std::fs::write(
        &config,
        r#"
        [[deployment]]
        name = "b"
        plugin = "misbehave.wasm"   # beside this file
        max_concurrent = 1
        max_queued = 0
        cpu_budget = 0.3
        api_key_env = "B_API_KEY"
        "#,
    )
    .unwrap();
    let trainer = Trainer::slow(Duration::from_millis(300)).await;
    let mut command = std::process::Command::new(host_binary());
    command.env("B_API_KEY", "b-key");
    let server = Server::start_command(
        &plugin("calc"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--admin-token",
            TOKEN,
            "--cpu-budget",
            "30",
        ],
        command,
    );
    // b's key, not the server's (there is none): 401 without it.
    let (status, body) = init_at_with(
        &server,
        "b",
        &misbehave_body("b-spin", &trainer, "spin"),
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let started = Instant::now();
    let (status, body) = init_at_with(
        &server,
        "b",
        &misbehave_body("b-spin", &trainer, "spin"),
        Some("b-key"),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // b holds one rollout: the second is 429, while the default deployment
    // (the flags: 100 at once, no key) takes three.
    let (status, body) =
        init_at_with(&server, "b", &init_body("b-full", &trainer), Some("b-key")).await;
    assert_eq!(status, 429, "{body}");
    for id in ["d-1", "d-2", "d-3"] {
        let (status, body) = server.init(&init_body(id, &trainer)).await;
        assert_eq!(status, 202, "{id}: {body}");
    }
    // b's 0.3 s CPU budget, not the flags' 30 s, stops the spinning plugin.
    let spun = trainer.single_completion("b-spin").await;
    assert!(
        spun["error_message"]
            .as_str()
            .unwrap_or_default()
            .contains("exceeded its CPU budget"),
        "{spun}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{spun}");
    for id in ["d-1", "d-2", "d-3"] {
        assert_eq!(trainer.single_completion(id).await["status"], "COMPLETED");
    }
    // /platform/health: b's behind its key; the default has none (404).
    assert_eq!(
        server
            .get("/deployments/b/platform/health", Some("Bearer b-key"))
            .await
            .0,
        200
    );
    assert_eq!(
        server.get("/deployments/b/platform/health", None).await.0,
        401
    );
    assert_eq!(
        server.get("/platform/health", Some("Bearer b-key")).await.0,
        404
    );

    // Deleted and uploaded again, b keeps the file's settings.
    let (status, body) = admin(
        &server,
        reqwest::Method::DELETE,
        "/b",
        Vec::new(),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = upload(&server, "b", &plugin("misbehave")).await;
    assert_eq!(status, 201, "{body}");
    let (_, health) = server
        .get("/deployments/b/platform/health", Some("Bearer b-key"))
        .await;
    assert_eq!(health["capacity"]["running"], 1, "{health}");
    assert_eq!(health["capacity"]["rollouts"], 1, "{health}");
}

/// A config file that cannot be used stops the server at start with one
/// line naming the file and the problem.
#[test]
fn a_bad_config_file_is_one_line_and_exit_2() {
    // Some of these load a plugin before they fail: not beside a timed test.
    let _serial = Serial::acquire();
    let dir = tempfile::tempdir().unwrap();
    let calc = plugin("calc");
    for (text, expected) in [
        (
            "[[deployment]]\nname = \"b\"\nplugin = \"x.wasm\"\ncpu_budgt = 1\n",
            "unknown field `cpu_budgt`",
        ),
        (
            "[[deployment]]\nname = \"b\"\nplugin = \"x.wasm\"\nmax_memory_mib = 0\n",
            "deployment 'b': max_memory_mib is 0",
        ),
        (
            "[[deployment]]\nname = \"default\"\nplugin = \"x.wasm\"\n",
            "deployment 'default' is named twice",
        ),
        (
            "[[deployment]]\nname = \"b\"\nplugin = \"missing.wasm\"\n",
            "deployment 'b': ",
        ),
    ] {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, text).unwrap();
        let out = std::process::Command::new(host_binary())
            .arg("--plugin")
            .arg(&calc)
            .arg("--config")
            .arg(&config)
            .args(["--port", "0", "--host", "127.0.0.1"])
            .env("ROLLOUT_CACHE_DIR", compile_cache())
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}: {stderr}");
        assert!(stderr.contains(expected), "{text}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
    let out = std::process::Command::new(host_binary())
        .args(["--config", "/nonexistent/rollout-host.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot read the config file /nonexistent/rollout-host.toml"),
    );
}
