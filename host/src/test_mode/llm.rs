//! The LLM a test run talks to in place of a trainer: any OpenAI-compatible
//! chat-completions API, named LiteLLM-style (`openai/gpt-4o`) or reached
//! through `--base-url`.

use crate::protocol::{Tool, json_text};
use crate::trainer::{ChatDialect, TrainerError};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// A provider the model name's prefix can pick.
#[derive(Debug, PartialEq, Eq)]
pub struct Provider {
    /// The LiteLLM prefix (`openai` in `openai/gpt-4o`).
    pub prefix: &'static str,
    /// Its OpenAI-compatible endpoint, version path included; `None`: the
    /// server is the user's own, so `--base-url` is required.
    pub base_url: Option<&'static str>,
    /// Environment variables holding its key, first set wins; empty: no key.
    pub key_vars: &'static [&'static str],
}

/// The providers a model prefix names (LiteLLM's prefixes).
pub const PROVIDERS: &[Provider] = &[
    Provider {
        prefix: "openai",
        base_url: Some("https://api.openai.com/v1"),
        key_vars: &["OPENAI_API_KEY"],
    },
    Provider {
        prefix: "anthropic",
        base_url: Some("https://api.anthropic.com/v1"),
        key_vars: &["ANTHROPIC_API_KEY"],
    },
    Provider {
        prefix: "openrouter",
        base_url: Some("https://openrouter.ai/api/v1"),
        key_vars: &["OPENROUTER_API_KEY"],
    },
    Provider {
        prefix: "together_ai",
        base_url: Some("https://api.together.xyz/v1"),
        key_vars: &["TOGETHER_API_KEY", "TOGETHERAI_API_KEY"],
    },
    Provider {
        prefix: "together",
        base_url: Some("https://api.together.xyz/v1"),
        key_vars: &["TOGETHER_API_KEY", "TOGETHERAI_API_KEY"],
    },
    Provider {
        prefix: "groq",
        base_url: Some("https://api.groq.com/openai/v1"),
        key_vars: &["GROQ_API_KEY"],
    },
    Provider {
        prefix: "deepseek",
        base_url: Some("https://api.deepseek.com/v1"),
        key_vars: &["DEEPSEEK_API_KEY"],
    },
    Provider {
        prefix: "mistral",
        base_url: Some("https://api.mistral.ai/v1"),
        key_vars: &["MISTRAL_API_KEY"],
    },
    Provider {
        prefix: "fireworks_ai",
        base_url: Some("https://api.fireworks.ai/inference/v1"),
        key_vars: &["FIREWORKS_API_KEY", "FIREWORKS_AI_API_KEY"],
    },
    Provider {
        prefix: "xai",
        base_url: Some("https://api.x.ai/v1"),
        key_vars: &["XAI_API_KEY"],
    },
    Provider {
        prefix: "gemini",
        base_url: Some("https://generativelanguage.googleapis.com/v1beta/openai"),
        key_vars: &["GEMINI_API_KEY"],
    },
    Provider {
        prefix: "ollama",
        base_url: Some("http://localhost:11434/v1"),
        key_vars: &[],
    },
    Provider {
        prefix: "hosted_vllm",
        base_url: None,
        key_vars: &[],
    },
];

/// The model without a prefix goes to OpenAI.
const DEFAULT_PROVIDER: &str = "openai";

/// Where and how the LLM is called, resolved from the flags.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmTarget {
    /// The provider the name picked, if any.
    pub provider: Option<&'static str>,
    /// The model name sent (the prefix stripped).
    pub model: String,
    /// `{base_url}/chat/completions`.
    pub chat_url: reqwest::Url,
    pub api_key: Option<String>,
    /// Where the key was looked for, for the 401 hint.
    pub key_source: String,
}

/// Why the flags do not name a usable LLM (a usage error: exit 2).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct LlmError(pub String);

impl LlmTarget {
    /// Resolves `--model`, `--base-url` and `--api-key`; `env` reads the
    /// environment.
    pub fn resolve(
        model: &str,
        base_url: Option<&str>,
        api_key: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, LlmError> {
        let (provider, name) = match model.split_once('/') {
            Some((prefix, rest)) => match PROVIDERS.iter().find(|p| p.prefix == prefix) {
                Some(p) => (Some(p), rest),
                None => (None, model),
            },
            None => (None, model),
        };
        if name.trim().is_empty() {
            return Err(LlmError(format!("--model '{model}' names no model")));
        }
        // No prefix and no URL: OpenAI, as the reference does.
        let provider = match (provider, base_url) {
            (None, None) if !model.contains('/') => {
                PROVIDERS.iter().find(|p| p.prefix == DEFAULT_PROVIDER)
            }
            (None, None) => {
                let known: Vec<&str> = PROVIDERS.iter().map(|p| p.prefix).collect();
                return Err(LlmError(format!(
                    "--model '{model}' names no known provider ({}): pass --base-url for an \
                     OpenAI-compatible server (vLLM, SGLang, Ollama, ...)",
                    known.join(", ")
                )));
            }
            (p, _) => p,
        };
        let base = match (base_url, provider.and_then(|p| p.base_url)) {
            (Some(url), _) => url,
            (None, Some(url)) => url,
            (None, None) => {
                return Err(LlmError(format!(
                    "--model '{model}' runs on your own server: pass --base-url (e.g. http://localhost:8000/v1)"
                )));
            }
        };
        let chat_url = chat_url(base)?;
        // A provider's key goes only to the provider's own endpoint, never
        // to a --base-url it did not choose.
        let own_endpoint = base_url.is_none();
        let key_vars: &[&str] = match provider {
            Some(p) if own_endpoint => p.key_vars,
            _ => &[],
        };
        let key_source = match key_vars.first() {
            Some(var) => format!("pass --api-key or set {var}"),
            None => "pass --api-key".to_owned(),
        };
        let api_key = match api_key {
            Some(key) => Some(key.to_owned()),
            None => key_vars
                .iter()
                .find_map(|var| env(var).filter(|v| !v.trim().is_empty())),
        };
        if api_key.is_none()
            && let Some(var) = key_vars.first()
        {
            return Err(LlmError(format!(
                "no API key for {}: pass --api-key or set {var}",
                provider.map_or("the LLM", |p| p.prefix)
            )));
        }
        Ok(Self {
            provider: provider.map(|p| p.prefix),
            model: name.to_owned(),
            chat_url,
            api_key,
            key_source,
        })
    }

    /// One line saying what a failed LLM call means and what to do.
    pub fn explain(&self, error: &TrainerError, settings: &CallSettings) -> String {
        let url = &self.chat_url;
        match error {
            TrainerError::Rejected {
                status: status @ (401 | 403),
                body,
            } => format!(
                "the LLM refused the API key (HTTP {status}): {}; {}",
                short(body),
                self.key_source
            ),
            TrainerError::Rejected { status: 404, body } => format!(
                "model '{}' or its endpoint {url} was not found (HTTP 404): {}; check --model and --base-url",
                self.model,
                short(body)
            ),
            TrainerError::Rejected { status, body } if is_context_overflow(body) => format!(
                "the conversation no longer fits the model's context window (HTTP {status}): {}; lower --max-turns or --max-tokens",
                short(body)
            ),
            TrainerError::Rejected { status, body } => {
                format!(
                    "the LLM rejected the request (HTTP {status}): {}",
                    short(body)
                )
            }
            TrainerError::RateLimited { body, .. } => format!(
                "the LLM kept answering 429 (rate limited) after {} retries: {}; lower --concurrency or raise --chat-retries",
                settings.retries,
                short(body)
            ),
            TrainerError::Failed { status, body } => format!(
                "the LLM failed with HTTP {status} after {} retries: {}",
                settings.retries,
                short(body)
            ),
            TrainerError::Timeout(_) => format!(
                "the LLM did not answer within {} s ({} retries); raise --chat-timeout",
                settings.timeout.as_secs_f64(),
                settings.retries
            ),
            TrainerError::Transport(m) => {
                format!("cannot reach the LLM at {url}: {m}; check --base-url")
            }
            TrainerError::BadResponse(m) => {
                format!("the LLM's answer is not a chat completion: {m}")
            }
        }
    }
}

/// Errors no later row can escape: the run stops at the first.
pub fn is_fatal(error: &TrainerError) -> bool {
    matches!(
        error,
        TrainerError::Rejected {
            status: 401 | 403 | 404,
            ..
        }
    )
}

/// The chat settings an explanation quotes.
#[derive(Debug, Clone, Copy)]
pub struct CallSettings {
    pub retries: u32,
    pub timeout: Duration,
}

/// A provider's error body, as its message when it has one (`error.message`).
fn short(body: &str) -> String {
    let message = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let text = message.unwrap_or_else(|| body.trim().to_owned());
    let text = text.replace('\n', " ");
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None if text.is_empty() => "(no body)".to_owned(),
        None => text,
    }
}

fn is_context_overflow(body: &str) -> bool {
    let body = body.to_ascii_lowercase();
    [
        "context_length_exceeded",
        "context length",
        "context window",
        "too many tokens",
        "prompt is too long",
    ]
    .iter()
    .any(|needle| body.contains(needle))
}

/// `{base}/chat/completions`, checked to be an http(s) URL.
fn chat_url(base: &str) -> Result<reqwest::Url, LlmError> {
    let joined = format!("{}/chat/completions", base.trim_end_matches('/'));
    let url = reqwest::Url::parse(&joined)
        .map_err(|e| LlmError(format!("--base-url '{base}' is not a URL: {e}")))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(LlmError(format!(
            "--base-url '{base}' must be http or https, not {other}"
        ))),
    }
}

/// How test mode writes a chat request: the model, the flags' sampling
/// settings, the row's tools as OpenAI function tools, then the agent's
/// own parameters (which win); no `rollout_id` or `logprobs`, which a
/// provider does not know.
#[derive(Debug)]
pub struct LlmDialect {
    /// `model` and the flags' settings, ready to extend.
    base: Map<String, Value>,
    /// The row's tools (from its `get-tools`), set once it has them.
    tools: std::sync::OnceLock<Value>,
}

impl LlmDialect {
    pub fn new(model: &str, sampling: &Map<String, Value>) -> Self {
        let mut base = Map::new();
        base.insert("model".into(), json!(model));
        base.extend(sampling.iter().map(|(k, v)| (k.clone(), v.clone())));
        Self {
            base,
            tools: std::sync::OnceLock::new(),
        }
    }

    /// The tools sent with every request (none are sent when empty).
    pub fn set_tools(&self, tools: &[Tool]) {
        if !tools.is_empty() {
            let _ = self.tools.set(json!(tools));
        }
    }
}

impl ChatDialect for LlmDialect {
    fn fields(&self, params: &Map<String, Value>, _rollout_id: &str) -> String {
        let mut fields = self.base.clone();
        if let Some(tools) = self.tools.get() {
            fields.insert("tools".into(), tools.clone());
        }
        for (k, v) in params {
            match (k.as_str(), v) {
                ("messages" | "rollout_id" | "model", _) | (_, Value::Null) => {}
                ("stop", Value::String(s)) => {
                    fields.insert("stop".into(), json!([s]));
                }
                _ => {
                    fields.insert(k.clone(), v.clone());
                }
            }
        }
        json_text(&fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn model_names_pick_provider_url_and_key() {
        let vars = env(&[
            ("OPENAI_API_KEY", "sk-o"),
            ("GROQ_API_KEY", "gk"),
            ("TOGETHERAI_API_KEY", "tk"),
        ]);
        let t = LlmTarget::resolve("gpt-4o", None, None, &vars).unwrap();
        assert_eq!(
            t.chat_url.as_str(),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            (t.model.as_str(), t.api_key.as_deref()),
            ("gpt-4o", Some("sk-o"))
        );
        let t = LlmTarget::resolve("openai/gpt-4o", None, None, &vars).unwrap();
        assert_eq!(t.model, "gpt-4o");
        let t = LlmTarget::resolve("groq/llama-3.3-70b", None, None, &vars).unwrap();
        assert_eq!(
            t.chat_url.as_str(),
            "https://api.groq.com/openai/v1/chat/completions"
        );
        assert_eq!(
            (t.model.as_str(), t.api_key.as_deref()),
            ("llama-3.3-70b", Some("gk"))
        );
        // The second variable of a provider is read too.
        let t = LlmTarget::resolve("together_ai/meta/llama", None, None, &vars).unwrap();
        assert_eq!(
            (t.model.as_str(), t.api_key.as_deref()),
            ("meta/llama", Some("tk"))
        );
        // openrouter keeps the rest of the name, slashes and all.
        let e = LlmTarget::resolve("openrouter/anthropic/claude", None, None, &vars).unwrap_err();
        assert_eq!(
            e.0,
            "no API key for openrouter: pass --api-key or set OPENROUTER_API_KEY"
        );
        let t = LlmTarget::resolve("openrouter/anthropic/claude", None, Some("k"), &vars).unwrap();
        assert_eq!(t.model, "anthropic/claude");
        // A served model name goes as is to the base URL, with no key
        // unless one is given (a provider's key never goes elsewhere).
        let t = LlmTarget::resolve(
            "Qwen/Qwen3-8B",
            Some("http://localhost:8000/v1/"),
            None,
            &vars,
        )
        .unwrap();
        assert_eq!(
            t.chat_url.as_str(),
            "http://localhost:8000/v1/chat/completions"
        );
        assert_eq!(
            (t.model.as_str(), t.api_key.as_deref()),
            ("Qwen/Qwen3-8B", None)
        );
        let t = LlmTarget::resolve("openai/gpt-4o", Some("http://proxy/v1"), None, &vars).unwrap();
        assert_eq!((t.model.as_str(), t.api_key.as_deref()), ("gpt-4o", None));
        let t = LlmTarget::resolve("ollama/llama3", None, None, &vars).unwrap();
        assert_eq!(
            t.chat_url.as_str(),
            "http://localhost:11434/v1/chat/completions"
        );
        for (model, base, error) in [
            ("Qwen/Qwen3-8B", None, "names no known provider"),
            ("hosted_vllm/x", None, "pass --base-url"),
            ("gpt-4o", Some("localhost:8000"), "must be http or https"),
            ("gpt-4o", Some("not a url"), "is not a URL"),
            ("openai/", None, "names no model"),
        ] {
            let e = LlmTarget::resolve(model, base, None, &vars).unwrap_err();
            assert!(e.0.contains(error), "{model}: {e}");
        }
        let e = LlmTarget::resolve("gpt-4o", None, None, env(&[])).unwrap_err();
        assert_eq!(
            e.0,
            "no API key for openai: pass --api-key or set OPENAI_API_KEY"
        );
    }

    #[test]
    fn provider_errors_are_explained_in_one_line() {
        let t = LlmTarget::resolve("gpt-4o", None, Some("k"), env(&[])).unwrap();
        let s = CallSettings {
            retries: 3,
            timeout: Duration::from_secs(5),
        };
        let body = r#"{"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}"#;
        for (error, expected) in [
            (
                TrainerError::Rejected {
                    status: 401,
                    body: body.into(),
                },
                "the LLM refused the API key (HTTP 401): Incorrect API key provided; pass --api-key",
            ),
            (
                TrainerError::Rejected {
                    status: 404,
                    body: "".into(),
                },
                "model 'gpt-4o' or its endpoint https://api.openai.com/v1/chat/completions was not found (HTTP 404): (no body)",
            ),
            (
                TrainerError::Rejected {
                    status: 400,
                    body: r#"{"error":{"code":"context_length_exceeded","message":"too long"}}"#
                        .into(),
                },
                "no longer fits the model's context window",
            ),
            (
                TrainerError::RateLimited {
                    body: "slow down".into(),
                    retry_after: None,
                },
                "kept answering 429 (rate limited) after 3 retries: slow down",
            ),
            (
                TrainerError::Failed {
                    status: 503,
                    body: "x\ny".into(),
                },
                "failed with HTTP 503 after 3 retries: x y",
            ),
            (
                TrainerError::Timeout("t".into()),
                "did not answer within 5 s (3 retries); raise --chat-timeout",
            ),
        ] {
            let text = t.explain(&error, &s);
            assert!(text.contains(expected), "{text}");
            assert!(!text.contains('\n'));
        }
        assert!(is_fatal(&TrainerError::Rejected {
            status: 401,
            body: String::new()
        }));
        assert!(!is_fatal(&TrainerError::Failed {
            status: 500,
            body: String::new()
        }));
    }

    #[test]
    fn requests_carry_model_tools_and_the_agents_params() {
        let sampling = json!({"temperature": 0.0, "max_tokens": 64})
            .as_object()
            .unwrap()
            .clone();
        let dialect = LlmDialect::new("gpt-4o", &sampling);
        let no_tools: Value = serde_json::from_str(&dialect.fields(&Map::new(), "test-0")).unwrap();
        assert_eq!(
            no_tools,
            json!({"model": "gpt-4o", "temperature": 0.0, "max_tokens": 64})
        );
        let tool =
            Tool::from_plugin("add".into(), "Add".into(), r#"{"type":"object"}"#.into()).unwrap();
        dialect.set_tools(&[tool]);
        let params =
            json!({"temperature": 0.5, "stop": "###", "rollout_id": "x", "seed": 1, "top_p": null});
        let fields: Value =
            serde_json::from_str(&dialect.fields(params.as_object().unwrap(), "test-0")).unwrap();
        assert_eq!(fields["model"], json!("gpt-4o"));
        assert_eq!(fields["temperature"], json!(0.5));
        assert_eq!(fields["max_tokens"], json!(64));
        assert_eq!(fields["stop"], json!(["###"]));
        assert_eq!(fields["seed"], json!(1));
        assert!(fields.get("rollout_id").is_none() && fields.get("top_p").is_none());
        assert!(fields.get("logprobs").is_none());
        assert_eq!(
            fields["tools"],
            json!([{"type": "function", "function": {"name": "add", "description": "Add", "parameters": {"type": "object"}}}])
        );
    }
}
