//! Calculator rollouts against a scripted trainer, for the calculator in
//! each guest language (Rust, Python, JavaScript).

use crate::harness::*;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn right_answer_completes_with_reward_one() {
    for calc in CALCULATORS {
        eprintln!("calculator: {calc}");
        let trainer = Trainer::calculator("add", 5.0, 3.0, "8").await;
        let server = Server::start(calc, &[]);
        let body = init_body("r-right", &trainer);

        let (status, init) = server.init(&body).await;
        assert_eq!(status, 202, "{init}");
        assert_eq!(init["rollout_id"], "r-right");
        let names: Vec<&str> = init["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["add", "subtract", "multiply", "divide"]);
        assert_eq!(init["tools"][0]["type"], "function");
        assert_eq!(
            init["tools"][0]["function"]["parameters"]["required"],
            json!(["a", "b"])
        );
        assert!(
            !init.to_string().contains("null"),
            "no JSON nulls in the init answer: {init}"
        );

        let done = trainer.single_completion("r-right").await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
        assert_eq!(done["reward"], 1.0);
        assert_eq!(done["finish_reason"], "stop");
        let final_messages = done["final_messages"].as_array().unwrap();
        assert_eq!(
            final_messages[..2],
            body["messages"].as_array().unwrap()[..],
            "final_messages starts with the init messages"
        );
        let tool_msg = &final_messages[3];
        assert_eq!(
            tool_msg,
            &json!({"role": "tool", "content": "8", "tool_call_id": "call_1"})
        );
        assert_eq!(done["metrics"]["num_llm_calls"], 2);
        assert_eq!(done["metrics"]["num_tool_calls"], 1);
        assert_eq!(done["metrics"]["prompt_tokens"], 20);
        assert_eq!(done["metrics"]["response_tokens"], 20);
        assert!(
            done["metrics"]["total_latency_ms"].as_f64().unwrap()
                >= done["metrics"]["llm_latency_ms"].as_f64().unwrap()
        );
        assert!(done.get("error_message").is_none());

        let chats = trainer.chats_for("r-right");
        assert_eq!(chats.len(), 2);
        for call in &chats {
            assert_eq!(call.body["rollout_id"], "r-right");
            assert_eq!(call.body["temperature"], 0.3);
            assert_eq!(call.body["max_tokens"], 64);
            assert_eq!(call.body["stop"], json!(["###"]));
            assert_eq!(call.body["top_p"], 1.0);
            assert_eq!(call.body["logprobs"], true);
            assert_eq!(call.authorization, None, "no bearer without an api_key");
        }
        // Append-only: each history extends the previous one plus its reply.
        let first = chats[0].body["messages"].as_array().unwrap();
        let second = chats[1].body["messages"].as_array().unwrap();
        assert_eq!(first[..], body["messages"].as_array().unwrap()[..]);
        assert_eq!(second[..first.len()], first[..]);
        assert_eq!(second[first.len()]["tool_calls"][0]["id"], "call_1");
        assert_eq!(trainer.completions()[0].authorization, None);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_answer_gets_reward_zero_and_api_key_is_sent() {
    for calc in CALCULATORS {
        eprintln!("calculator: {calc}");
        let trainer = Trainer::calculator("multiply", 6.0, 7.0, "41").await;
        let server = Server::start(calc, &[]);
        let mut body = init_body("r-wrong", &trainer);
        body["metadata"] = json!({"ground_truth": "42"});
        body["api_key"] = json!("trainer-secret");
        assert_eq!(server.init(&body).await.0, 202);

        let done = trainer.single_completion("r-wrong").await;
        assert_eq!(done["status"], "COMPLETED");
        assert_eq!(done["reward"], 0.0);
        assert_eq!(
            done["final_messages"][3]["content"], "42",
            "the tool really ran"
        );
        for call in trainer.chats_for("r-wrong") {
            assert_eq!(call.authorization.as_deref(), Some("Bearer trainer-secret"));
        }
        assert_eq!(
            trainer.completions()[0].authorization.as_deref(),
            Some("Bearer trainer-secret")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_ground_truth_means_no_reward_and_tool_errors_reach_the_model() {
    for calc in CALCULATORS {
        eprintln!("calculator: {calc}");
        let trainer = Trainer::calculator("divide", 1.0, 0.0, "0").await;
        let server = Server::start(calc, &[]);
        let mut body = init_body("r-div0", &trainer);
        body["metadata"] = json!({});
        assert_eq!(server.init(&body).await.0, 202);
        let done = trainer.single_completion("r-div0").await;
        assert_eq!(done["status"], "COMPLETED");
        assert!(done.get("reward").is_none(), "{done}");
        assert_eq!(
            done["final_messages"][3]["content"],
            "Error: division by zero"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn max_turns_and_max_tokens_end_the_loop() {
    for calc in CALCULATORS {
        eprintln!("calculator: {calc}");
        // A model that always calls a tool.
        let always_tool = |_: &Value, _| {
            (
                200,
                completion(
                    json!({"role": "assistant", "content": null, "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
                    ]}),
                    "tool_calls",
                    100,
                ),
            )
        };
        let trainer = Trainer::start(always_tool).await;
        let server = Server::start(calc, &[]);
        let mut body = init_body("r-turns", &trainer);
        body["max_turns"] = json!(3);
        assert_eq!(server.init(&body).await.0, 202);
        let done = trainer.single_completion("r-turns").await;
        assert_eq!(done["finish_reason"], "max_turns");
        assert_eq!(done["metrics"]["num_llm_calls"], 3);
        assert_eq!(
            done["final_messages"][3]["content"], "3",
            "arguments given as an object are accepted"
        );

        let mut body = init_body("r-tokens", &trainer);
        body["max_tokens_total"] = json!(250);
        assert_eq!(server.init(&body).await.0, 202);
        let done = trainer.single_completion("r-tokens").await;
        assert_eq!(done["finish_reason"], "max_tokens");
        assert_eq!(done["metrics"]["num_llm_calls"], 3);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn trainer_503_twice_then_200_completes() {
    for calc in CALCULATORS {
        eprintln!("calculator: {calc}");
        let inner = calculator_script("add", 5.0, 3.0, "8");
        let trainer = Trainer::start(move |body, index| {
            if index < 2 {
                (503, json!({"error": "overloaded"}))
            } else {
                inner(body, index)
            }
        })
        .await;
        let server = Server::start(calc, &[]);
        assert_eq!(server.init(&init_body("r-503", &trainer)).await.0, 202);
        let done = trainer.single_completion("r-503").await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
        assert_eq!(done["reward"], 1.0);
        assert_eq!(
            trainer.chats_for("r-503").len(),
            4,
            "two failed attempts, then two calls"
        );
        assert_eq!(done["metrics"]["num_llm_calls"], 2);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn trainer_400_fails_at_once_with_one_error_callback() {
    for calc in CALCULATORS {
        eprintln!("calculator: {calc}");
        let trainer = Trainer::start(|_, _| (400, json!({"error": "context too long"}))).await;
        let server = Server::start(calc, &[]);
        assert_eq!(server.init(&init_body("r-400", &trainer)).await.0, 202);
        let done = trainer.single_completion("r-400").await;
        assert_eq!(done["status"], "ERROR");
        assert_eq!(done["finish_reason"], "error");
        let msg = done["error_message"].as_str().unwrap();
        assert!(
            msg.contains("400") && msg.contains("context too long"),
            "{msg}"
        );
        assert_eq!(trainer.chats_for("r-400").len(), 1, "4xx is not retried");
        assert_eq!(
            done["final_messages"].as_array().unwrap().len(),
            2,
            "history so far"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn trainer_5xx_forever_gives_up_after_the_retries() {
    for calc in CALCULATORS {
        eprintln!("calculator: {calc}");
        let trainer = Trainer::start(|_, _| (502, json!({"error": "bad gateway"}))).await;
        let server = Server::start(calc, &["--chat-retries", "2"]);
        assert_eq!(server.init(&init_body("r-502", &trainer)).await.0, 202);
        let done = trainer.single_completion("r-502").await;
        assert_eq!(done["status"], "ERROR");
        assert!(done["error_message"].as_str().unwrap().contains("502"));
        assert_eq!(
            trainer.chats_for("r-502").len(),
            3,
            "first attempt and two retries"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_inits_share_one_answer_and_one_run() {
    let trainer = Trainer::calculator("add", 5.0, 3.0, "8").await;
    let server = Server::start("calc", &[]);

    // Sequential duplicate, also after the run finished.
    let body = init_body("r-dup", &trainer);
    let (s1, first) = server.init_raw(body.to_string().into_bytes(), None).await;
    trainer.single_completion("r-dup").await;
    let (s2, second) = server.init_raw(body.to_string().into_bytes(), None).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first, second, "byte for byte");

    // Five concurrent duplicates sharing an idempotency key; a different
    // rollout_id gets the first request's answer.
    let mut body = init_body("r-conc", &trainer);
    body["idempotency_key"] = json!("key-1");
    let mut tasks = Vec::new();
    for i in 0..5 {
        let mut body = body.clone();
        if i == 4 {
            body["rollout_id"] = json!("r-conc-other");
        }
        let url = server.url.clone();
        tasks.push(tokio::spawn(async move {
            let r = client()
                .post(format!("{url}/v1/rollout/init"))
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap())
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let callbacks: Vec<_> = trainer
        .completions()
        .into_iter()
        .filter(|c| c.body["rollout_id"] != "r-dup")
        .collect();
    assert_eq!(callbacks.len(), 1, "one run for five inits: {callbacks:#?}");
    let chats = trainer
        .chats()
        .into_iter()
        .filter(|c| c.body["rollout_id"] != "r-dup")
        .count();
    assert_eq!(chats, 2, "one rollout's chat calls");
}

#[tokio::test(flavor = "multi_thread")]
async fn callback_4xx_is_final_and_204_is_delivered() {
    for status in [400u16, 204] {
        let trainer = Trainer::start_with(
            calculator_script("add", 1.0, 1.0, "2"),
            status,
            Duration::ZERO,
        )
        .await;
        let server = Server::start("calc", &[]);
        assert_eq!(server.init(&init_body("r-cb", &trainer)).await.0, 202);
        let done = trainer.single_completion("r-cb").await;
        assert_eq!(
            done["status"], "COMPLETED",
            "HTTP {status}: no ERROR follow-up"
        );
    }
}

/// A callback answered 5xx is retried; with `--delivery-deadline 0` it is
/// given up after the retries, by default it is tried again in the
/// background (the same callback, never a second status).
#[tokio::test(flavor = "multi_thread")]
async fn callback_5xx_is_retried() {
    let trainer =
        Trainer::start_with(calculator_script("add", 1.0, 1.0, "2"), 500, Duration::ZERO).await;
    let server = Server::start(
        "calc",
        &["--completion-retries", "2", "--delivery-deadline", "0"],
    );
    assert_eq!(server.init(&init_body("r-cb5", &trainer)).await.0, 202);
    trainer.wait_completions(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        trainer.completions().len(),
        3,
        "first attempt and two retries"
    );
    drop(server);

    let server = Server::start(
        "calc",
        &["--completion-retries", "2", "--retry-max-delay", "0.1"],
    );
    assert_eq!(
        server.init(&init_body("r-cb5-again", &trainer)).await.0,
        202
    );
    let got = trainer
        .wait_completions(3 + 10, Duration::from_secs(10))
        .await;
    assert!(
        got.iter().all(|c| c.body["status"] == "COMPLETED"),
        "the same callback, never a second status"
    );
    let (_, status) = server.get("/v1/rollout/r-cb5-again", None).await;
    assert_eq!(status["status"], "completed");
}

#[tokio::test(flavor = "multi_thread")]
async fn full_server_answers_429_with_retry_after() {
    let trainer = Trainer::slow(Duration::from_millis(800)).await;
    let server = Server::start("calc", &["--max-concurrent", "1", "--max-queued", "1"]);
    assert_eq!(server.init(&init_body("q-1", &trainer)).await.0, 202);
    assert_eq!(
        server.init(&init_body("q-2", &trainer)).await.0,
        202,
        "queued"
    );
    let response = client()
        .post(format!("{}/v1/rollout/init", server.url))
        .json(&init_body("q-3", &trainer))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("capacity"));
    // The refused key is not remembered: once there is room, it is accepted.
    trainer.wait_completions(2, Duration::from_secs(20)).await;
    assert_eq!(server.init(&init_body("q-3", &trainer)).await.0, 202);
    trainer.single_completion("q-3").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_sends_one_error_callback_for_unfinished_rollouts() {
    let trainer = Trainer::slow(Duration::from_secs(20)).await;
    let mut server = Server::start("calc", &["--shutdown-grace", "0.2"]);
    assert_eq!(server.init(&init_body("r-shut", &trainer)).await.0, 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (status, server)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "clean exit: {:?}", status.0);
    let done = trainer.single_completion("r-shut").await;
    assert_eq!(done["status"], "ERROR");
    assert_eq!(
        done["error_message"],
        format!(
            "plugin {} was stopped: rollout-host shut down before the rollout finished",
            build_label("calc", "calculator")
        )
    );
}
