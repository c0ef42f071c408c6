//! Property run of init parsing and validation: 100,000 generated bodies
//! (valid ones with fields removed, retyped or replaced by arbitrary JSON,
//! unknown fields added, and raw bytes), none of which may panic; every
//! rejected body must be a 422 whose errors name the fields that are wrong.

use super::parse_init_request;
use crate::trainer::{RetryPolicy, TrainerClient};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

const FIELDS: [&str; 10] = [
    "rollout_id",
    "server_url",
    "messages",
    "completion_params",
    "tool_server_url",
    "max_turns",
    "max_tokens_total",
    "metadata",
    "api_key",
    "idempotency_key",
];
const REQUIRED: [&str; 4] = ["rollout_id", "server_url", "messages", "completion_params"];
const METADATA_LIMIT: usize = 1 << 10;

fn valid() -> Map<String, Value> {
    let Value::Object(body) = json!({
        "rollout_id": "r-1",
        "server_url": "http://trainer:8000/",
        "messages": [{"role": "user", "content": "2 + 3?"}],
        "completion_params": {"temperature": 0.7},
        "tool_server_url": "http://tools",
        "max_turns": 10,
        "max_tokens_total": 8192,
        "metadata": {"ground_truth": "5"},
        "api_key": "k",
        "idempotency_key": "i"
    }) else {
        unreachable!()
    };
    body
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("http://h"),
            Just("https://x.y:1/p"),
            Just("ftp://h"),
            Just("http://"),
            Just("  "),
            Just("")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What happens to one field of a valid body.
#[derive(Debug, Clone)]
enum Change {
    Keep,
    Remove,
    Replace(Value),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => Just(Change::Keep),
        1 => Just(Change::Remove),
        2 => any_json().prop_map(Change::Replace),
    ]
}

fn mutated() -> impl Strategy<Value = (Vec<u8>, BTreeSet<&'static str>, BTreeSet<&'static str>)> {
    (
        prop::collection::vec(change(), FIELDS.len()),
        prop::collection::btree_map("[a-z_]{1,8}", any_json(), 0..3),
    )
        .prop_map(|(changes, extra)| {
            let mut body = valid();
            let mut changed = BTreeSet::new();
            let mut removed = BTreeSet::new();
            for (field, change) in FIELDS.iter().zip(changes) {
                match change {
                    Change::Keep => {}
                    Change::Remove => {
                        body.remove(*field);
                        removed.insert(*field);
                    }
                    Change::Replace(v) => {
                        body.insert((*field).to_owned(), v);
                        changed.insert(*field);
                    }
                }
            }
            for (k, v) in extra {
                if !FIELDS.contains(&k.as_str()) {
                    body.insert(k, v);
                }
            }
            (
                serde_json::to_vec(&Value::Object(body)).unwrap(),
                changed,
                removed,
            )
        })
}

fn client() -> &'static TrainerClient {
    static CLIENT: std::sync::OnceLock<TrainerClient> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        TrainerClient::new(RetryPolicy::default(), Duration::from_secs(1)).expect("client")
    })
}

/// The properties every body must have; `named` is what the errors name.
fn check(body: &[u8]) -> Result<BTreeSet<String>, TestCaseError> {
    match parse_init_request(body, METADATA_LIMIT) {
        Ok(request) => {
            // What validation accepts, the trainer client can call.
            prop_assert!(client().endpoints(&request.server_url).is_ok());
            Ok(BTreeSet::new())
        }
        Err(errors) => {
            prop_assert!(!errors.0.is_empty(), "a rejection says why");
            let answer = errors.to_body();
            let detail = answer["detail"].as_array().cloned().unwrap_or_default();
            prop_assert_eq!(detail.len(), errors.0.len());
            let mut named = BTreeSet::new();
            for e in detail {
                prop_assert!(e["type"].is_string() && e["msg"].is_string(), "{}", e);
                let loc = e["loc"].as_array().cloned().unwrap_or_default();
                prop_assert_eq!(&loc[0], "body");
                if let Some(field) = loc.get(1).and_then(Value::as_str) {
                    named.insert(field.to_owned());
                }
            }
            Ok(named)
        }
    }
}

#[test]
fn init_bodies_never_panic_and_rejections_name_the_field() {
    let cases = std::env::var("INIT_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&mutated(), |(body, changed, removed)| {
            let named = check(&body)?;
            for field in &named {
                prop_assert!(
                    changed.contains(field.as_str()) || removed.contains(field.as_str()),
                    "{} named but untouched: {}",
                    field,
                    String::from_utf8_lossy(&body)
                );
            }
            for field in REQUIRED.iter().filter(|f| removed.contains(*f)) {
                prop_assert!(named.contains(*field), "missing {} not reported", field);
            }
            Ok(())
        })
        .unwrap();
    // Raw bytes and broken JSON: rejected with a body, never a panic.
    let mut runner = TestRunner::new(Config {
        cases: cases / 10,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(
                mutated(),
                prop::collection::vec(any::<u8>(), 0..64),
                any::<prop::sample::Index>(),
            ),
            |((body, _, _), noise, at)| {
                let mut broken = body.clone();
                broken.truncate(at.index(body.len() + 1));
                broken.extend_from_slice(&noise);
                check(&broken)?;
                check(&noise)?;
                Ok(())
            },
        )
        .unwrap();
}
