//! `POST /v1/rollout/init` request body (RolloutRequest) and its rules.

use super::validation::{ValidationError, ValidationErrors};
use serde_json::{Map, Value, json};

/// Default `max_turns` when the trainer sends none.
pub const DEFAULT_MAX_TURNS: u32 = 10;
/// Default `max_tokens_total` when the trainer sends none.
pub const DEFAULT_MAX_TOKENS_TOTAL: u64 = 8192;
const MAX_ROLLOUT_ID_CHARS: usize = 256;

/// A validated init request.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRequest {
    pub rollout_id: String,
    /// Absolute http(s) URL, trailing `/` stripped.
    pub server_url: String,
    pub messages: Vec<Value>,
    pub completion_params: Map<String, Value>,
    pub tool_server_url: Option<String>,
    pub max_turns: u32,
    pub max_tokens_total: u64,
    pub metadata: Map<String, Value>,
    pub api_key: Option<String>,
    pub idempotency_key: Option<String>,
}

impl RolloutRequest {
    /// The idempotency key: `idempotency_key`, else `rollout_id`.
    pub fn idempotency_key(&self) -> &str {
        self.idempotency_key.as_deref().unwrap_or(&self.rollout_id)
    }
}

/// Parses and validates an init body. Every rule violation is reported, in
/// the FastAPI/pydantic shape the reference server answers with.
pub fn parse_init_request(
    body: &[u8],
    metadata_limit: usize,
) -> Result<RolloutRequest, ValidationErrors> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ValidationErrors(vec![
            ValidationError::new("json_invalid", &[json!(e.column())], "JSON decode error")
                .with_ctx(json!({ "error": e.to_string() })),
        ])
    })?;
    let Value::Object(mut body) = value else {
        return Err(ValidationErrors(vec![ValidationError::new(
            "model_attributes_type",
            &[],
            "Input should be a valid dictionary or object to extract fields from",
        )]));
    };
    let mut errors = Vec::new();
    let mut take = |name: &str| body.remove(name);

    let rollout_id = required(take("rollout_id"), "rollout_id", &mut errors)
        .and_then(|v| string(v, "rollout_id", &mut errors))
        .and_then(|s| check_rollout_id(s, &mut errors));
    let server_url = required(take("server_url"), "server_url", &mut errors)
        .and_then(|v| string(v, "server_url", &mut errors))
        .and_then(|s| check_server_url(s, &mut errors));
    let messages = required(take("messages"), "messages", &mut errors)
        .and_then(|v| message_list(v, &mut errors));
    let completion_params = required(take("completion_params"), "completion_params", &mut errors)
        .and_then(|v| object(v, "completion_params", &mut errors));
    let tool_server_url = optional_string(take("tool_server_url"), "tool_server_url", &mut errors);
    let max_turns = defaulted(
        take("max_turns"),
        DEFAULT_MAX_TURNS as u64,
        "max_turns",
        u32::MAX as u64,
        &mut errors,
    );
    let max_tokens_total = defaulted(
        take("max_tokens_total"),
        DEFAULT_MAX_TOKENS_TOTAL,
        "max_tokens_total",
        u64::MAX,
        &mut errors,
    );
    let metadata = match take("metadata") {
        None => Some(Map::new()),
        Some(v) => object(v, "metadata", &mut errors)
            .and_then(|m| check_metadata(m, metadata_limit, &mut errors)),
    };
    let api_key = optional_string(take("api_key"), "api_key", &mut errors);
    let idempotency_key = optional_string(take("idempotency_key"), "idempotency_key", &mut errors);

    match (
        rollout_id,
        server_url,
        messages,
        completion_params,
        max_turns,
        max_tokens_total,
        metadata,
    ) {
        (
            Some(rollout_id),
            Some(server_url),
            Some(messages),
            Some(completion_params),
            Some(max_turns),
            Some(max_tokens_total),
            Some(metadata),
        ) if errors.is_empty() => Ok(RolloutRequest {
            rollout_id,
            server_url,
            messages,
            completion_params,
            tool_server_url: tool_server_url.flatten(),
            max_turns: max_turns as u32,
            max_tokens_total,
            metadata,
            api_key: api_key.flatten(),
            idempotency_key: idempotency_key.flatten(),
        }),
        _ => Err(ValidationErrors(errors)),
    }
}

fn required(v: Option<Value>, field: &str, errors: &mut Vec<ValidationError>) -> Option<Value> {
    if v.is_none() {
        errors.push(ValidationError::new(
            "missing",
            &[json!(field)],
            "Field required",
        ));
    }
    v
}

fn string(v: Value, field: &str, errors: &mut Vec<ValidationError>) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        _ => {
            errors.push(ValidationError::new(
                "string_type",
                &[json!(field)],
                "Input should be a valid string",
            ));
            None
        }
    }
}

/// `Some(None)` for absent or null, `Some(Some(s))` for a string, `None` on error.
fn optional_string(
    v: Option<Value>,
    field: &str,
    errors: &mut Vec<ValidationError>,
) -> Option<Option<String>> {
    match v {
        None | Some(Value::Null) => Some(None),
        Some(v) => string(v, field, errors).map(Some),
    }
}

fn object(v: Value, field: &str, errors: &mut Vec<ValidationError>) -> Option<Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        _ => {
            errors.push(ValidationError::new(
                "dict_type",
                &[json!(field)],
                "Input should be a valid dictionary",
            ));
            None
        }
    }
}

fn message_list(v: Value, errors: &mut Vec<ValidationError>) -> Option<Vec<Value>> {
    let Value::Array(items) = v else {
        errors.push(ValidationError::new(
            "list_type",
            &[json!("messages")],
            "Input should be a valid list",
        ));
        return None;
    };
    let before = errors.len();
    for (i, item) in items.iter().enumerate() {
        if !item.is_object() {
            errors.push(ValidationError::new(
                "dict_type",
                &[json!("messages"), json!(i)],
                "Input should be a valid dictionary",
            ));
        }
    }
    (errors.len() == before).then_some(items)
}

/// An integer field with a default; integral floats (`10.0`) are accepted
/// like pydantic does, negatives and out-of-range values are not.
fn defaulted(
    v: Option<Value>,
    default: u64,
    field: &str,
    max: u64,
    errors: &mut Vec<ValidationError>,
) -> Option<u64> {
    let Some(v) = v else { return Some(default) };
    let n = match &v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= max as f64)
                .map(|f| f as u64)
        }),
        _ => None,
    };
    match n {
        Some(n) if n <= max => Some(n),
        _ => {
            let msg = match &v {
                Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() != 0.0) => {
                    "Input should be a valid integer, got a number with a fractional part"
                        .to_owned()
                }
                Value::Number(_) => format!(
                    "Input should be greater than or equal to 0 and less than or equal to {max}"
                ),
                _ => "Input should be a valid integer".to_owned(),
            };
            errors.push(ValidationError::new("int_type", &[json!(field)], msg));
            None
        }
    }
}

fn check_rollout_id(s: String, errors: &mut Vec<ValidationError>) -> Option<String> {
    let chars = s.chars().count();
    let loc = [json!("rollout_id")];
    if chars == 0 {
        errors.push(
            ValidationError::new(
                "string_too_short",
                &loc,
                "String should have at least 1 character",
            )
            .with_ctx(json!({"min_length": 1})),
        );
    } else if chars > MAX_ROLLOUT_ID_CHARS {
        errors.push(
            ValidationError::new(
                "string_too_long",
                &loc,
                format!("String should have at most {MAX_ROLLOUT_ID_CHARS} characters"),
            )
            .with_ctx(json!({"max_length": MAX_ROLLOUT_ID_CHARS})),
        );
    } else if s.chars().all(char::is_whitespace) {
        errors.push(ValidationError::new(
            "value_error",
            &loc,
            "Value error, rollout_id must not be empty or whitespace-only",
        ));
    } else {
        return Some(s);
    }
    None
}

fn check_server_url(s: String, errors: &mut Vec<ValidationError>) -> Option<String> {
    let ok = url::Url::parse(&s).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    });
    if ok.is_none() {
        errors.push(ValidationError::new(
            "value_error",
            &[json!("server_url")],
            format!("Value error, server_url must be an absolute http or https URL with a host, got {s:?}"),
        ));
        return None;
    }
    Some(s.trim_end_matches('/').to_owned())
}

fn check_metadata(
    m: Map<String, Value>,
    limit: usize,
    errors: &mut Vec<ValidationError>,
) -> Option<Map<String, Value>> {
    let size = python_json_len_map(&m);
    if size > limit {
        errors.push(ValidationError::new(
            "value_error",
            &[json!("metadata")],
            format!("Value error, metadata is {size} bytes of JSON, more than the limit of {limit} bytes"),
        ));
        return None;
    }
    Some(m)
}

/// Length of `json.dumps(value)` in Python (", " and ": " separators,
/// non-ASCII escaped as `\uXXXX`), which is how the reference measures the
/// metadata limit.
fn python_json_len(v: &Value) -> usize {
    match v {
        Value::Null => 4,
        Value::Bool(b) => {
            if *b {
                4
            } else {
                5
            }
        }
        Value::Number(n) => n.to_string().len(),
        Value::String(s) => python_str_len(s),
        Value::Array(items) => {
            2 + items.iter().map(python_json_len).sum::<usize>() + 2 * items.len().saturating_sub(1)
        }
        Value::Object(m) => python_json_len_map(m),
    }
}

fn python_json_len_map(m: &Map<String, Value>) -> usize {
    2 + m
        .iter()
        .map(|(k, v)| python_str_len(k) + 2 + python_json_len(v))
        .sum::<usize>()
        + 2 * m.len().saturating_sub(1)
}

fn python_str_len(s: &str) -> usize {
    2 + s
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{08}' | '\u{0c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c if c.is_ascii() => 1,
            c if (c as u32) > 0xFFFF => 12,
            _ => 6,
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        json!({
            "rollout_id": "r-1",
            "server_url": "http://trainer:8000/",
            "messages": [{"role": "user", "content": "hi"}],
            "completion_params": {"temperature": 0.7},
        })
    }

    fn parse(v: &Value) -> Result<RolloutRequest, ValidationErrors> {
        parse_init_request(v.to_string().as_bytes(), 1 << 20)
    }

    #[test]
    fn defaults_and_normalisation() {
        let r = parse(&base()).unwrap();
        assert_eq!(r.server_url, "http://trainer:8000");
        assert_eq!(r.max_turns, 10);
        assert_eq!(r.max_tokens_total, 8192);
        assert!(r.metadata.is_empty());
        assert_eq!(r.idempotency_key(), "r-1");
    }

    #[test]
    fn python_len_matches_json_dumps() {
        // json.dumps({"a": [1, "é", None], "b": "x\ny"}) == '{"a": [1, "\\u00e9", null], "b": "x\\ny"}'
        let v = json!({"a": [1, "é", null], "b": "x\ny"});
        assert_eq!(
            python_json_len(&v),
            r#"{"a": [1, "\u00e9", null], "b": "x\ny"}"#.len()
        );
        assert_eq!(python_str_len("😀"), 14);
    }

    #[test]
    fn rollout_id_counts_characters_not_bytes() {
        let mut v = base();
        v["rollout_id"] = json!("é".repeat(256));
        assert!(parse(&v).is_ok());
        v["rollout_id"] = json!("é".repeat(257));
        assert_eq!(parse(&v).unwrap_err().0[0].kind, "string_too_long");
    }

    #[test]
    fn every_error_is_reported() {
        let v =
            json!({"rollout_id": " ", "server_url": "ftp://x", "messages": [1], "max_turns": 1.5});
        let kinds: Vec<_> = parse(&v)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| (e.kind, e.loc))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("value_error", vec![json!("body"), json!("rollout_id")]),
                ("value_error", vec![json!("body"), json!("server_url")]),
                (
                    "dict_type",
                    vec![json!("body"), json!("messages"), json!(0)]
                ),
                ("missing", vec![json!("body"), json!("completion_params")]),
                ("int_type", vec![json!("body"), json!("max_turns")]),
            ]
        );
    }
}
