//! Calls to the trainer: `/v1/chat/completions` and `/v1/rollout/completed`,
//! with the protocol's bearer token, timeouts and retry policy (§3).

use crate::metrics::{TrainerCall, TrainerMetrics};
use crate::protocol::json_text;
use bytes::Bytes;
use reqwest::StatusCode;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Retry and timeout settings (reference defaults in `Default`).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Per-attempt timeout of a chat call.
    pub chat_timeout: Duration,
    /// Per-attempt timeout of the completion callback.
    pub callback_timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries after the first chat attempt (5xx, timeouts, transport errors).
    pub chat_retries: u32,
    /// Retries after the first completion-callback attempt.
    pub completion_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Retry 429 after its `Retry-After` (an LLM provider's rate limit, in
    /// test mode). The protocol never retries a trainer's 4xx.
    pub retry_rate_limited: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            chat_timeout: Duration::from_secs(300),
            callback_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            chat_retries: 3,
            completion_retries: 2,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            retry_rate_limited: false,
        }
    }
}

impl RetryPolicy {
    /// `min(base * 2^attempt, max)`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.base_delay
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max_delay)
    }

    /// The wait before retrying a 429: its `Retry-After` when it sent one
    /// (at most [`MAX_RETRY_AFTER`]), else the usual backoff.
    fn rate_limit_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        retry_after.map_or_else(|| self.delay(attempt), |d| d.min(MAX_RETRY_AFTER))
    }
}

/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// Why a call to the trainer failed for good.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainerError {
    #[error("trainer unreachable: {0}")]
    Transport(String),
    #[error("trainer timed out: {0}")]
    Timeout(String),
    /// 3xx or 4xx: final, not retried.
    #[error("trainer rejected the request with HTTP {status}: {body}")]
    Rejected { status: u16, body: String },
    /// 429, final unless the policy retries it (then: on every attempt).
    #[error("rate limited with HTTP 429: {body}")]
    RateLimited {
        body: String,
        retry_after: Option<Duration>,
    },
    /// 5xx on every attempt.
    #[error("trainer failed with HTTP {status}: {body}")]
    Failed { status: u16, body: String },
    #[error("unusable trainer response: {0}")]
    BadResponse(String),
}

impl TrainerError {
    /// The trainer answered and refused (a 3xx/4xx, a final 429) or its
    /// answer was unusable: trying again later would get the same.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            TrainerError::Rejected { .. }
                | TrainerError::RateLimited { .. }
                | TrainerError::BadResponse(_)
        )
    }
}

/// `choices[0]` of a chat completion, plus usage and token data.
#[derive(Debug, Clone)]
pub struct ChatCompletion {
    /// The assistant message (a JSON object), compactly encoded.
    pub message: Box<RawValue>,
    pub finish_reason: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub token_ids: Option<Vec<u32>>,
    pub prompt_token_ids: Option<Vec<u32>>,
    /// Log-probabilities as the trainer wrote them (JSON), when not null.
    pub logprobs: Option<String>,
}

/// Largest trainer response body read (a chat completion with logprobs of a
/// long answer is a few MiB).
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// How much of an error body is kept for the error message.
const ERROR_BODY_CHARS: usize = 512;

/// The one HTTP client of the server (pooled keep-alive connections).
#[derive(Debug, Clone)]
pub struct TrainerClient {
    http: reqwest::Client,
    policy: RetryPolicy,
    /// Where attempts, chat latencies and callback outcomes are counted.
    metrics: Option<TrainerMetrics>,
    /// The last server URL's endpoints: a training run has one trainer, so
    /// its URLs are parsed once, not twice per rollout.
    last_endpoints: Arc<Mutex<Option<Arc<Endpoints>>>>,
}

/// A trainer's two endpoints.
#[derive(Debug)]
pub struct Endpoints {
    /// The init's `server_url` they were made from.
    pub server_url: String,
    /// `{server_url}/v1/chat/completions`
    pub chat: Arc<reqwest::Url>,
    /// `{server_url}/v1/rollout/completed`
    pub completed: reqwest::Url,
}

impl TrainerClient {
    /// A client whose connections close after `idle_timeout` unused, so a
    /// burst's connections do not stay open (and resident) for good.
    pub fn new(policy: RetryPolicy, idle_timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(policy.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(idle_timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("rollout-host/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            policy,
            metrics: None,
            last_endpoints: Arc::default(),
        })
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Counts every call in `metrics`.
    pub fn with_metrics(mut self, metrics: TrainerMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The endpoints under `server_url` (a validated init's, which always
    /// parse), reused while the server URL stays the same.
    pub fn endpoints(&self, server_url: &str) -> Result<Arc<Endpoints>, TrainerError> {
        let mut last = self
            .last_endpoints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(endpoints) = last.as_ref()
            && endpoints.server_url == server_url
        {
            return Ok(endpoints.clone());
        }
        let endpoints = Arc::new(Endpoints {
            server_url: server_url.to_owned(),
            chat: Arc::new(endpoint(server_url, "/v1/chat/completions")?),
            completed: endpoint(server_url, "/v1/rollout/completed")?,
        });
        *last = Some(endpoints.clone());
        Ok(endpoints)
    }

    /// `POST {server_url}/v1/chat/completions` with `body`; retries 5xx,
    /// timeouts and transport errors; 3xx/4xx are final.
    pub async fn chat(
        &self,
        url: &reqwest::Url,
        api_key: Option<&str>,
        body: Bytes,
    ) -> Result<ChatCompletion, TrainerError> {
        let started = std::time::Instant::now();
        let posted = self
            .post_with_retries(
                TrainerCall::Chat,
                url,
                api_key,
                body,
                self.policy.chat_timeout,
                self.policy.chat_retries,
            )
            .await;
        if let Some(metrics) = &self.metrics {
            metrics.chat(started.elapsed());
        }
        parse_chat_completion(&posted?.1)
    }

    /// `POST {server_url}/v1/rollout/completed` with a callback `body`
    /// (JSON); any 2xx is delivered.
    pub async fn complete(
        &self,
        url: &reqwest::Url,
        api_key: Option<&str>,
        body: Bytes,
    ) -> Result<StatusCode, TrainerError> {
        let posted = self
            .post_with_retries(
                TrainerCall::Callback,
                url,
                api_key,
                body,
                self.policy.callback_timeout,
                self.policy.completion_retries,
            )
            .await;
        if let Some(metrics) = &self.metrics {
            metrics.callback(&posted);
        }
        Ok(posted?.0)
    }

    async fn post_with_retries(
        &self,
        call: TrainerCall,
        url: &reqwest::Url,
        api_key: Option<&str>,
        body: Bytes,
        timeout: Duration,
        retries: u32,
    ) -> Result<(StatusCode, Bytes), TrainerError> {
        let mut attempt = 0;
        loop {
            let posted = self.post_once(url, api_key, body.clone(), timeout).await;
            if let Some(metrics) = &self.metrics {
                metrics.attempt(call, &posted);
            }
            let err = match posted {
                Ok(ok) => return Ok(ok),
                Err(e @ (TrainerError::Rejected { .. } | TrainerError::BadResponse(_))) => {
                    return Err(e);
                }
                Err(e @ TrainerError::RateLimited { .. }) if !self.policy.retry_rate_limited => {
                    return Err(e);
                }
                Err(e) => e,
            };
            if attempt >= retries {
                return Err(err);
            }
            let delay = match &err {
                TrainerError::RateLimited { retry_after, .. } => {
                    self.policy.rate_limit_delay(attempt, *retry_after)
                }
                _ => self.policy.delay(attempt),
            };
            tracing::warn!(%url, attempt = attempt + 1, error = %err, ?delay, "trainer call failed, retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn post_once(
        &self,
        url: &reqwest::Url,
        api_key: Option<&str>,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), TrainerError> {
        let mut request = self
            .http
            .post(url.clone())
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = api_key {
            request = request.bearer_auth(key);
        }
        let mut response = request.send().await.map_err(classify)?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(TrainerError::BadResponse(format!(
                    "response body larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let body_text = || {
            let text = String::from_utf8_lossy(&bytes);
            text.chars().take(ERROR_BODY_CHARS).collect::<String>()
        };
        match status.as_u16() {
            200..=299 => Ok((status, bytes.into())),
            429 => Err(TrainerError::RateLimited {
                body: body_text(),
                retry_after,
            }),
            500..=599 => Err(TrainerError::Failed {
                status: status.as_u16(),
                body: body_text(),
            }),
            code => Err(TrainerError::Rejected {
                status: code,
                body: body_text(),
            }),
        }
    }
}

/// How long a 429 asks to wait: `retry-after-ms` (OpenAI's), else
/// `Retry-After` in seconds (an HTTP date is not read: the backoff applies).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        let value: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (value.is_finite() && value >= 0.0).then_some(value)
    };
    number("retry-after-ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| number("retry-after"))
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
}

/// `{server_url}{path}`.
fn endpoint(server_url: &str, path: &str) -> Result<reqwest::Url, TrainerError> {
    reqwest::Url::parse(&format!("{server_url}{path}")).map_err(|e| {
        TrainerError::Transport(format!("invalid trainer URL {server_url}{path}: {e}"))
    })
}

fn classify(e: reqwest::Error) -> TrainerError {
    let text = error_chain(&e);
    if e.is_timeout() {
        TrainerError::Timeout(text)
    } else {
        TrainerError::Transport(text)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// How a rollout's chat requests are written beside `messages`: for a
/// trainer ([`TrainerDialect`]) or for an LLM provider (test mode).
pub trait ChatDialect: Send + Sync + std::fmt::Debug {
    /// The request's other fields, a JSON object's text, for the agent's
    /// sampling `params`.
    fn fields(&self, params: &Map<String, Value>, rollout_id: &str) -> String;
}

/// The protocol's chat request to a trainer ([`chat_fields`]).
#[derive(Debug)]
pub struct TrainerDialect;

impl ChatDialect for TrainerDialect {
    fn fields(&self, params: &Map<String, Value>, rollout_id: &str) -> String {
        chat_fields(params, rollout_id)
    }
}

/// The fields of a chat request beside `messages`, encoded once per rollout
/// (a JSON object's text): the reference's defaults, the agent's parameters
/// (all forwarded, `stop` as a list) and the routing `rollout_id`.
pub fn chat_fields(params: &Map<String, Value>, rollout_id: &str) -> String {
    let mut fields = Map::new();
    fields.insert("model".into(), json!("default"));
    fields.insert("rollout_id".into(), json!(rollout_id));
    fields.insert("temperature".into(), json!(1.0));
    fields.insert("top_p".into(), json!(1.0));
    fields.insert("max_tokens".into(), json!(512));
    fields.insert("logprobs".into(), json!(true));
    for (k, v) in params {
        match (k.as_str(), v) {
            ("messages" | "rollout_id", _) => {}
            ("stop", Value::Null) => {}
            ("stop", Value::String(s)) => {
                fields.insert("stop".into(), json!([s]));
            }
            (_, Value::Null)
                if matches!(
                    k.as_str(),
                    "temperature" | "top_p" | "max_tokens" | "logprobs"
                ) => {}
            _ => {
                fields.insert(k.clone(), v.clone());
            }
        }
    }
    json_text(&fields)
}

/// A chat request body: `messages`, a checked JSON array's text written as
/// is, followed by the encoded `fields` of [`chat_fields`].
pub fn chat_body(messages: &str, fields: &str) -> Vec<u8> {
    let members = fields.strip_prefix('{').unwrap_or("}");
    let mut body = Vec::with_capacity(messages.len() + fields.len() + 16);
    body.extend_from_slice(br#"{"messages":"#);
    body.extend_from_slice(messages.as_bytes());
    if members != "}" {
        body.push(b',');
    }
    body.extend_from_slice(members.as_bytes());
    body
}

/// The fields of a chat completion the host reads; the rest is skipped
/// without being decoded; logprobs stay the trainer's JSON text.
#[derive(serde::Deserialize)]
struct CompletionFields<'a> {
    #[serde(borrow, default, deserialize_with = "first_choice")]
    choices: Option<ChoiceFields<'a>>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(borrow, default)]
    token_ids: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prompt_token_ids: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct ChoiceFields<'a> {
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(default)]
    finish_reason: Option<Value>,
    #[serde(borrow, default)]
    token_ids: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prompt_token_ids: Option<&'a RawValue>,
    #[serde(borrow, default)]
    logprobs: Option<&'a RawValue>,
}

/// `choices[0]`, read in the same pass as the rest (later choices are
/// skipped); a missing or null list is `None`.
fn first_choice<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<ChoiceFields<'de>>, D::Error> {
    struct First;
    impl<'de> serde::de::Visitor<'de> for First {
        type Value = Option<ChoiceFields<'de>>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of choices")
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let first = seq.next_element()?;
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(first)
        }
    }
    d.deserialize_any(First)
}

/// Reads `choices[0]`, usage and token ids from a chat completion's body.
pub fn parse_chat_completion(bytes: &[u8]) -> Result<ChatCompletion, TrainerError> {
    let bad = |m: &str| TrainerError::BadResponse(m.to_owned());
    let top: CompletionFields = serde_json::from_slice(bytes).map_err(|e| {
        TrainerError::BadResponse(match e.classify() {
            serde_json::error::Category::Data => format!("not a chat completion: {e}"),
            _ => format!("not JSON: {e}"),
        })
    })?;
    let usage = top.usage.unwrap_or(Value::Null);
    let count = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (prompt_tokens, completion_tokens) = (count("prompt_tokens"), count("completion_tokens"));
    let total_tokens = usage
        .get("total_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(prompt_tokens + completion_tokens);
    let choice = top.choices.ok_or_else(|| bad("no choices[0]"))?;
    let message = choice
        .message
        .ok_or_else(|| bad("choices[0] has no message"))?;
    let message: Map<String, Value> = serde_json::from_str(message.get())
        .map_err(|_| bad("choices[0].message is not an object"))?;
    // Re-encoded compactly with sorted keys, the way serde_json guests write
    // it back: the next call's history then matches it byte for byte.
    let message = serde_json::value::to_raw_value(&message)
        .map_err(|e| TrainerError::BadResponse(format!("choices[0].message: {e}")))?;
    let finish_reason = choice
        .finish_reason
        .as_ref()
        .and_then(Value::as_str)
        .unwrap_or("stop")
        .to_owned();
    // A choice's own token ids win over the response's top-level ones.
    let ids = |v: Option<&RawValue>| -> Option<Vec<u32>> {
        v.and_then(|v| serde_json::from_str(v.get()).ok())
    };
    Ok(ChatCompletion {
        message,
        finish_reason,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        token_ids: ids(choice.token_ids.or(top.token_ids)),
        prompt_token_ids: ids(choice.prompt_token_ids.or(top.prompt_token_ids)),
        logprobs: choice.logprobs.map(|l| l.get().to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_defaults_and_forwarding() {
        let params = json!({"temperature": 0.2, "stop": "###", "seed": 7, "max_tokens": null})
            .as_object()
            .unwrap()
            .clone();
        let messages = [json!({"role": "user", "content": "hi"})];
        let text = serde_json::to_string(&messages).unwrap();
        let body: Value =
            serde_json::from_slice(&chat_body(&text, &chat_fields(&params, "r-1"))).unwrap();
        assert_eq!(body["messages"], json!(messages));
        assert_eq!(body["temperature"], json!(0.2));
        assert_eq!(body["top_p"], json!(1.0));
        assert_eq!(body["max_tokens"], json!(512));
        assert_eq!(body["stop"], json!(["###"]));
        assert_eq!(body["seed"], json!(7));
        assert_eq!(body["logprobs"], json!(true));
        assert_eq!(body["rollout_id"], json!("r-1"));
        assert_eq!(body["model"], json!("default"));
        let no_stop: Value =
            serde_json::from_slice(&chat_body("[]", &chat_fields(&Map::new(), "r"))).unwrap();
        assert_eq!(no_stop["messages"], json!([]));
        assert!(no_stop.get("stop").is_none());
    }

    #[test]
    fn a_429_waits_its_retry_after() {
        use reqwest::header::{HeaderMap, HeaderValue};
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2")])),
            Some(Duration::from_secs(2))
        );
        // OpenAI's milliseconds win over the seconds.
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2"), ("retry-after-ms", "250")])),
            Some(Duration::from_millis(250))
        );
        for unread in ["Wed, 21 Oct 2026 07:28:00 GMT", "-1", "NaN", ""] {
            assert_eq!(
                retry_after(&headers(&[("retry-after", unread)])),
                None,
                "{unread}"
            );
        }
        let p = RetryPolicy::default();
        assert_eq!(
            p.rate_limit_delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(p.rate_limit_delay(1, None), Duration::from_secs(2));
        assert_eq!(
            p.rate_limit_delay(0, Some(Duration::from_secs(3600))),
            MAX_RETRY_AFTER
        );
        assert!(!p.retry_rate_limited, "a trainer's 429 is final");
    }

    #[test]
    fn backoff_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(0), Duration::from_secs(1));
        assert_eq!(p.delay(2), Duration::from_secs(4));
        assert_eq!(p.delay(10), Duration::from_secs(30));
    }

    #[test]
    fn parses_choice_zero_with_token_ids() {
        let body = json!({
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop", "token_ids": [1, 2]}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
            "prompt_token_ids": [9]
        });
        let c = parse_chat_completion(body.to_string().as_bytes()).unwrap();
        let message: Value = serde_json::from_str(c.message.get()).unwrap();
        assert_eq!(message["content"], json!("ok"));
        assert_eq!(
            (c.prompt_tokens, c.completion_tokens, c.total_tokens),
            (5, 2, 7)
        );
        assert_eq!(c.token_ids, Some(vec![1, 2]));
        assert_eq!(c.prompt_token_ids, Some(vec![9]));
        assert!(matches!(
            parse_chat_completion(b"{}"),
            Err(TrainerError::BadResponse(_))
        ));
    }

    #[test]
    fn completion_fields_are_read_leniently_and_logprobs_kept_as_text() {
        let parse = |v: Value| parse_chat_completion(v.to_string().as_bytes());
        // The message comes back compact with sorted keys (as a serde_json
        // guest re-encodes it); logprobs are passed on as written.
        let c = parse(json!({
            "choices": [{"message": {"role": "assistant", "content": "ok"},
                         "logprobs": {"content": [{"token": "ok", "logprob": -0.5}]}}],
            "token_ids": [3],
            "usage": null
        }))
        .unwrap();
        assert_eq!(c.message.get(), r#"{"content":"ok","role":"assistant"}"#);
        assert_eq!(
            c.logprobs.as_deref(),
            Some(r#"{"content":[{"logprob":-0.5,"token":"ok"}]}"#)
        );
        assert_eq!(c.finish_reason, "stop");
        assert_eq!(c.token_ids, Some(vec![3]));
        assert_eq!((c.prompt_tokens, c.total_tokens), (0, 0));
        let c = parse(json!({"choices": [{"message": {}, "logprobs": null, "token_ids": "x"}]}))
            .unwrap();
        assert_eq!((c.logprobs, c.token_ids), (None, None));
        for (body, error) in [
            (json!({"choices": []}), "no choices[0]"),
            (json!({"choices": null}), "no choices[0]"),
            (
                json!({"choices": {"0": {}}}),
                "not a chat completion: invalid type: map, expected a list of choices",
            ),
            (json!({"choices": [{}]}), "choices[0] has no message"),
            (
                json!({"choices": [{"message": "hi"}]}),
                "choices[0].message is not an object",
            ),
            (json!("text"), "not a chat completion"),
        ] {
            match parse(body.clone()) {
                Err(TrainerError::BadResponse(m)) => assert!(m.contains(error), "{body}: {m}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        match parse_chat_completion(b"{\"choices\": [") {
            Err(TrainerError::BadResponse(m)) => assert!(m.starts_with("not JSON"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn endpoints_are_parsed_once_per_server_url() {
        let client = TrainerClient::new(RetryPolicy::default(), Duration::from_secs(30)).unwrap();
        let a = client.endpoints("http://trainer:8000").unwrap();
        assert_eq!(a.chat.as_str(), "http://trainer:8000/v1/chat/completions");
        assert_eq!(
            a.completed.as_str(),
            "http://trainer:8000/v1/rollout/completed"
        );
        assert!(Arc::ptr_eq(
            &a,
            &client.clone().endpoints("http://trainer:8000").unwrap()
        ));
        let b = client.endpoints("http://other:9000/base").unwrap();
        assert_eq!(
            b.chat.as_str(),
            "http://other:9000/base/v1/chat/completions"
        );
        assert!(!Arc::ptr_eq(&a, &b));
    }
}
