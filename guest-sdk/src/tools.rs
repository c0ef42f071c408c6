use crate::context::elapsed_ms;
use crate::{RolloutContext, ToolDefinition};
use serde_json::{Map, Value, json};
use std::fmt;
use std::time::Instant;

/// A tool's failure; the model sees `Error: <message>` as the tool result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError(pub String);

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ToolError {}

impl From<String> for ToolError {
    fn from(m: String) -> Self {
        ToolError(m)
    }
}

impl From<&str> for ToolError {
    fn from(m: &str) -> Self {
        ToolError(m.to_owned())
    }
}

type Handler = Box<dyn Fn(&Map<String, Value>) -> Result<Value, ToolError>>;

/// The agent's tools, each declared once: name, description, JSON schema of
/// its arguments and its handler.
#[derive(Default)]
pub struct Toolbox {
    tools: Vec<(ToolDefinition, Handler)>,
}

impl Toolbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool. `parameters` is the JSON Schema of the arguments object
    /// the handler receives.
    pub fn tool(
        mut self,
        name: &str,
        description: &str,
        parameters: Value,
        handler: impl Fn(&Map<String, Value>) -> Result<Value, ToolError> + 'static,
    ) -> Self {
        let definition = ToolDefinition {
            name: name.to_owned(),
            description: description.to_owned(),
            parameters,
        };
        self.tools.push((definition, Box::new(handler)));
        self
    }

    /// The definitions to return from [`Agent::tools`](crate::Agent::tools).
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        self.tools.iter().map(|(d, _)| d.clone()).collect()
    }

    /// Runs one tool by name. `arguments` is the tool call's `arguments`: a
    /// JSON string (as OpenAI sends it) or an object.
    pub fn call(&self, name: &str, arguments: &Value) -> Result<Value, ToolError> {
        let (_, handler) = self
            .tools
            .iter()
            .find(|(d, _)| d.name == name)
            .ok_or_else(|| ToolError(format!("unknown tool '{name}'")))?;
        let parsed;
        let args = match arguments {
            Value::Object(map) => map,
            Value::String(text) if text.trim().is_empty() => {
                parsed = Map::new();
                &parsed
            }
            Value::String(text) => match serde_json::from_str(text) {
                Ok(Value::Object(map)) => {
                    parsed = map;
                    &parsed
                }
                Ok(_) => return Err(ToolError("arguments must be a JSON object".into())),
                Err(e) => return Err(ToolError(format!("arguments are not valid JSON: {e}"))),
            },
            Value::Null => {
                parsed = Map::new();
                &parsed
            }
            _ => return Err(ToolError("arguments must be a JSON object".into())),
        };
        handler(args)
    }

    /// Executes the tool calls of an assistant message in order and returns
    /// one `role: tool` message per call. Failures (unknown tool, bad
    /// arguments, handler errors) become `"Error: ..."` content, so the
    /// rollout goes on and the model sees the error. Each call is counted in
    /// the context's tool metrics.
    pub fn execute(&self, ctx: &mut RolloutContext, tool_calls: &[Value]) -> Vec<Value> {
        tool_calls
            .iter()
            .map(|call| {
                let start = Instant::now();
                let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
                let function = call.get("function");
                let outcome = match function.and_then(|f| f.get("name")).and_then(Value::as_str) {
                    Some(name) => {
                        let arguments = function
                            .and_then(|f| f.get("arguments"))
                            .unwrap_or(&Value::Null);
                        self.call(name, arguments)
                    }
                    None => Err(ToolError("tool call has no function name".into())),
                };
                let content = match outcome {
                    Ok(value) => format_tool_value(&value),
                    Err(e) => format!("Error: {e}"),
                };
                ctx.record_tool_call(elapsed_ms(start));
                json!({"role": "tool", "content": content, "tool_call_id": id})
            })
            .collect()
    }
}

/// Renders a tool result for the model: numbers plainly (`8`, `2.5`),
/// strings as they are, anything else as JSON.
pub fn format_tool_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => crate::json_text(other),
    }
}

/// Reads a numeric argument (a JSON number, or a string holding one).
pub fn number_arg(args: &Map<String, Value>, name: &str) -> Result<f64, ToolError> {
    match args.get(name) {
        Some(Value::Number(n)) => n
            .as_f64()
            .ok_or_else(|| ToolError(format!("'{name}' is not a finite number"))),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .ok_or_else(|| ToolError(format!("'{name}' must be a number, got \"{s}\""))),
        Some(other) => Err(ToolError(format!("'{name}' must be a number, got {other}"))),
        None => Err(ToolError(format!("missing required argument '{name}'"))),
    }
}
