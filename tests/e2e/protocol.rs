//! The init contract: validation (422), auth (401), health endpoints.

use crate::harness::*;
use serde_json::{Value, json};

fn base() -> Value {
    json!({
        "rollout_id": "v-1",
        "server_url": "http://127.0.0.1:9/",
        "messages": [{"role": "user", "content": "hi"}],
        "completion_params": {}
    })
}

fn with(field: &str, value: Value) -> Value {
    let mut b = base();
    b[field] = value;
    b
}

fn without(field: &str) -> Value {
    let mut b = base();
    b.as_object_mut().unwrap().remove(field);
    b
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rule_is_answered_422_naming_the_field() {
    let server = Server::start("calc", &[]);
    let oversized_metadata = json!({"blob": "x".repeat((1 << 20) + 16)});
    let cases: Vec<(&str, Value)> = vec![
        ("rollout_id", without("rollout_id")),
        ("rollout_id", with("rollout_id", json!(""))),
        ("rollout_id", with("rollout_id", json!("   \t"))),
        ("rollout_id", with("rollout_id", json!("x".repeat(257)))),
        ("rollout_id", with("rollout_id", json!(7))),
        ("server_url", without("server_url")),
        ("server_url", with("server_url", json!("not a url"))),
        ("server_url", with("server_url", json!("ftp://trainer/"))),
        ("server_url", with("server_url", json!("/relative/path"))),
        ("server_url", with("server_url", json!("http://"))),
        ("messages", without("messages")),
        ("messages", with("messages", json!({"role": "user"}))),
        ("messages", with("messages", json!(["hi"]))),
        ("completion_params", without("completion_params")),
        ("completion_params", with("completion_params", json!([1]))),
        ("max_turns", with("max_turns", json!("ten"))),
        ("max_turns", with("max_turns", json!(2.5))),
        ("max_turns", with("max_turns", json!(-1))),
        ("max_turns", with("max_turns", json!(null))),
        ("max_tokens_total", with("max_tokens_total", json!(true))),
        ("metadata", with("metadata", json!("x"))),
        ("metadata", with("metadata", oversized_metadata)),
        ("tool_server_url", with("tool_server_url", json!(5))),
        ("api_key", with("api_key", json!(5))),
        ("idempotency_key", with("idempotency_key", json!({}))),
    ];
    for (field, body) in cases {
        let (status, answer) = server.init(&body).await;
        assert_eq!(status, 422, "{field}: {answer}");
        let detail = answer["detail"]
            .as_array()
            .unwrap_or_else(|| panic!("detail list: {answer}"));
        assert!(
            detail.iter().any(|d| d["loc"][0] == "body"
                && d["loc"][1] == field
                && d["msg"].is_string()
                && d["type"].is_string()),
            "{field} not named in {answer}"
        );
    }
    // Exactly 256 characters (not bytes) is fine; unknown fields are ignored.
    let mut ok = with("rollout_id", json!("é".repeat(256)));
    ok["unknown_field"] = json!(1);
    ok["server_url"] = json!("http://127.0.0.1:9");
    ok["max_turns"] = json!(0);
    assert_eq!(server.init(&ok).await.0, 202);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_bodies_get_a_json_4xx() {
    let server = Server::start("calc", &[]);
    for body in [&b"{not json"[..], b"", b"[1, 2]", b"\"text\"", b"null"] {
        let (status, bytes) = server.init_raw(body.to_vec(), None).await;
        assert!((400..500).contains(&status), "{status} for {body:?}");
        let answer: Value = serde_json::from_slice(&bytes).expect("a JSON error body");
        assert!(
            answer["detail"].is_array() || answer["detail"].is_string(),
            "{answer}"
        );
    }
    let (status, bytes) = server.init_raw(vec![b' '; (16 << 20) + 1], None).await;
    assert_eq!(status, 413);
    assert!(serde_json::from_slice::<Value>(&bytes).is_ok());
    // An answer sent before the body was read to the end (over the limit;
    // a route that reads none, here the admin API, which is off) closes
    // the connection and says so, so the client's next request goes on
    // another; an answer to a body read keeps it.
    for _ in 0..5 {
        for (request, expected) in [
            (
                client()
                    .post(format!("{}/v1/rollout/init", server.url))
                    .body(vec![b' '; (16 << 20) + 1]),
                413,
            ),
            (
                client()
                    .put(format!("{}/admin/deployments/x", server.url))
                    .body(vec![0; 64 << 10]),
                404,
            ),
        ] {
            let response = request.send().await.expect("the answer");
            assert_eq!(response.status(), expected);
            assert_eq!(response.headers()["connection"], "close");
            let (status, _) = server.get("/health", None).await;
            assert_eq!(status, 200, "the next request on the same client");
        }
    }
    let response = client()
        .post(format!("{}/v1/rollout/init", server.url))
        .body("{not json")
        .send()
        .await
        .expect("the 422 answer");
    assert_eq!(response.status(), 422);
    assert!(response.headers().get("connection").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn api_key_guards_init_and_platform_health() {
    let trainer = Trainer::calculator("add", 1.0, 1.0, "2").await;
    let server = Server::start("calc", &["--api-key", "s3cret"]);
    let body = |id: &str| init_body(id, &trainer);

    let (status, answer) = server.init(&body("a-1")).await;
    assert_eq!((status, answer["detail"].is_string()), (401, true));
    assert_eq!(
        server.init_with(&body("a-2"), Some("Bearer wrong")).await.0,
        401
    );
    assert_eq!(
        server
            .init_with(&body("a-3"), Some("Bearer s3cret"))
            .await
            .0,
        202
    );
    assert_eq!(
        server.init_with(&body("a-4"), Some("s3cret")).await.0,
        202,
        "raw key, like the reference"
    );
    trainer.single_completion("a-3").await;

    assert_eq!(server.get("/platform/health", None).await.0, 401);
    assert_eq!(
        server.get("/platform/health", Some("Bearer nope")).await.0,
        401
    );
    let (status, health) = server.get("/platform/health", Some("Bearer s3cret")).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("healthy")));
    assert_eq!(server.get("/health", None).await.0, 200, "/health is open");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_the_agent_and_counts() {
    let trainer = Trainer::calculator("add", 1.0, 1.0, "2").await;
    let server = Server::start("calc", &[]);
    let (status, health) = server.get("/health", None).await;
    assert_eq!(status, 200);
    let capacity = health["capacity"].clone();
    let build = json!({"deployment": "default", "agent": "calculator",
                       "plugin_sha256": sha256_file(&plugin("calc"))});
    assert_eq!(
        health,
        json!({"status": "healthy", "agent_loop": "calculator", "active_rollouts": 0,
               "completed_rollouts": 0, "records": 0, "deployment": "default",
               "build": build, "capacity": capacity})
    );
    // 100 running + 1000 queued by default, within what the machine holds.
    assert_eq!(
        (capacity["rollouts"].as_u64(), capacity["running"].as_u64()),
        (Some(1100), Some(100))
    );
    assert!(
        capacity["machine_holds"].as_u64().unwrap() >= 1100,
        "{capacity}"
    );
    assert_eq!(
        server.get("/platform/health", None).await.0,
        404,
        "no API key configured"
    );
    assert_eq!(server.init(&init_body("h-1", &trainer)).await.0, 202);
    trainer.single_completion("h-1").await;
    let (_, health) = server.get("/health", None).await;
    assert_eq!(
        (
            health["active_rollouts"].as_u64(),
            health["completed_rollouts"].as_u64()
        ),
        (Some(0), Some(1))
    );
    let (status, missing) = server.get("/nope", None).await;
    assert_eq!(
        (status, missing["detail"].as_str()),
        (404, Some("Not Found"))
    );
}
