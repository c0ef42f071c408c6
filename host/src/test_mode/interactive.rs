//! `rollout-host test -i`: step through a rollout in the terminal. Before
//! each LLM call the run pauses for a key: `n` makes the call, `c` runs to
//! the end of the rollout, `m` shows the messages so far, `t` the tools,
//! `q` quits.

use crate::protocol::Tool;
use crate::trainer::{ChatCompletion, TrainerError};
use serde_json::Value;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use tokio_util::sync::CancellationToken;

/// One row's stepping state.
pub struct Stepper {
    row: usize,
    calls: AtomicU32,
    /// Messages already on the screen (the request's, the replies shown).
    shown: AtomicUsize,
    /// `c` was pressed: no more pauses in this rollout.
    to_the_end: AtomicBool,
    /// Cancelled by `q`: the runner stops the rollout and the test run.
    quit: CancellationToken,
}

impl Stepper {
    pub fn new(row: usize, quit: CancellationToken) -> Self {
        Self {
            row,
            calls: AtomicU32::new(0),
            shown: AtomicUsize::new(0),
            to_the_end: AtomicBool::new(false),
            quit,
        }
    }

    /// Shows where the rollout is and waits for a key; on `q` it never
    /// returns (the runner drops the rollout).
    pub async fn before_call(&self, messages: &str, tools: &[Tool]) {
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let messages: Vec<Value> = serde_json::from_str(messages).unwrap_or_default();
        // What the agent added since the last reply (tool results, ...);
        // the request's own messages were shown with the row.
        let shown = self.shown.swap(messages.len() + 1, Ordering::Relaxed);
        if call > 1 {
            for (i, m) in messages.iter().enumerate().skip(shown) {
                say(&format!("  [{i}] {}", show_message(m)));
            }
        }
        say(&format!(
            "\n-- row {} . LLM call {call} . {} messages, {} tools --",
            self.row,
            messages.len(),
            tools.len()
        ));
        if self.to_the_end.load(Ordering::Relaxed) {
            return;
        }
        loop {
            let key =
                read_key("[n] next call  [c] continue  [m] messages  [t] tools  [q] quit").await;
            match key {
                'n' => return,
                'c' => {
                    self.to_the_end.store(true, Ordering::Relaxed);
                    return;
                }
                'm' => say(&show_messages(&messages)),
                't' => say(&show_tools(tools)),
                'q' => {
                    self.quit.cancel();
                    std::future::pending::<()>().await;
                }
                other => say(&format!("'{other}' is not a command")),
            }
        }
    }

    /// Shows what the call brought back.
    pub fn after_call(&self, result: Result<&ChatCompletion, &TrainerError>) {
        match result {
            Ok(c) => {
                let message: Value = serde_json::from_str(c.message.get()).unwrap_or_default();
                say(&format!(
                    "  <- {} ({}, {} completion tokens)",
                    show_message(&message),
                    c.finish_reason,
                    c.completion_tokens
                ));
            }
            Err(e) => say(&format!("  <- LLM error: {e}")),
        }
    }
}

/// Prints a line and flushes (the terminal may be in raw mode next).
pub fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Shows `prompt` and waits for one key (lowercased; Enter is `n`); a
/// terminal that went away reads as `q`.
pub async fn read_key(prompt: &str) -> char {
    {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "{prompt} > ");
        let _ = out.flush();
    }
    let key = tokio::task::spawn_blocking(|| console::Term::stdout().read_key_raw())
        .await
        .ok()
        .and_then(Result::ok);
    let c = match key {
        Some(console::Key::Char(c)) => c.to_ascii_lowercase(),
        Some(console::Key::Enter) => 'n',
        Some(console::Key::CtrlC) => 'q',
        Some(_) => '?',
        None => 'q',
    };
    say(&c.to_string());
    c
}

fn show_messages(messages: &[Value]) -> String {
    let lines: Vec<String> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| format!("  [{i}] {}", show_message(m)))
        .collect();
    lines.join("\n")
}

/// `role: content`, with tool calls as `name(arguments)`.
fn show_message(m: &Value) -> String {
    let role = m.get("role").and_then(Value::as_str).unwrap_or("?");
    let mut text = role.to_owned();
    if let Some(id) = m.get("tool_call_id").and_then(Value::as_str) {
        text.push_str(&format!(" ({id})"));
    }
    match m.get("content") {
        Some(Value::String(s)) if !s.is_empty() => {
            text.push_str(": ");
            text.push_str(&s.replace('\n', "\n      "));
        }
        Some(Value::Null) | None => {}
        Some(other) => text.push_str(&format!(": {other}")),
    }
    if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let f = &call["function"];
            text.push_str(&format!(
                " -> {}({})",
                f["name"].as_str().unwrap_or("?"),
                f["arguments"].as_str().unwrap_or("")
            ));
        }
    }
    text
}

fn show_tools(tools: &[Tool]) -> String {
    if tools.is_empty() {
        return "  (the plugin offers no tools)".to_owned();
    }
    let lines: Vec<String> = tools
        .iter()
        .map(|t| {
            let f = &t.function;
            format!("  {}: {}  {}", f.name, f.description, f.parameters.get())
        })
        .collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_show_roles_contents_and_tool_calls() {
        let text = show_messages(&[
            json!({"role": "user", "content": "2 + 3?"}),
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\":2,\"b\":3}"}}
            ]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "5"}),
        ]);
        assert_eq!(
            text,
            "  [0] user: 2 + 3?\n  [1] assistant -> add({\"a\":2,\"b\":3})\n  [2] tool (c1): 5"
        );
    }
}
