use serde::Serialize;
use serde_json::{Value, json};

/// One entry of a FastAPI/pydantic 422 body:
/// `{"type": ..., "loc": ["body", field, ...], "msg": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationError {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub loc: Vec<Value>,
    pub msg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctx: Option<Value>,
}

impl ValidationError {
    pub fn new(kind: &'static str, loc: &[Value], msg: impl Into<String>) -> Self {
        let mut full = Vec::with_capacity(loc.len() + 1);
        full.push(json!("body"));
        full.extend_from_slice(loc);
        Self {
            kind,
            loc: full,
            msg: msg.into(),
            ctx: None,
        }
    }

    pub fn with_ctx(mut self, ctx: Value) -> Self {
        self.ctx = Some(ctx);
        self
    }
}

/// All the rule violations of one request body (answered 422).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl ValidationErrors {
    /// The JSON body: `{"detail": [ ... ]}`.
    pub fn to_body(&self) -> Value {
        json!({ "detail": self.0 })
    }
}

impl std::fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            let loc: Vec<String> = e
                .loc
                .iter()
                .map(|l| l.as_str().map_or(l.to_string(), str::to_owned))
                .collect();
            write!(f, "{}: {}", loc.join("."), e.msg)?;
        }
        Ok(())
    }
}
