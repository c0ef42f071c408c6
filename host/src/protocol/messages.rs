//! Chat messages as the JSON text that crosses the wasm boundary and the
//! wire: a history is split into each message's text (validated, never
//! decoded into values), compared message by message, and written on as is.

use serde_json::Value;
use serde_json::value::RawValue;

/// One message's JSON text (an object).
pub type Message = Box<RawValue>;

/// A JSON array of message objects, split into each message's JSON text
/// (validated, not decoded into values), or why not.
pub fn split_messages<'a>(text: &'a str, what: &str) -> Result<Vec<&'a RawValue>, String> {
    match serde_json::from_str::<Vec<&RawValue>>(text) {
        Ok(items) if items.iter().all(|m| m.get().starts_with('{')) => Ok(items),
        Ok(_) => Err(format!("{what} must be a JSON array of message objects")),
        Err(_) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
            Err(format!("{what} must be a JSON array of message objects"))
        }
        Err(e) => Err(format!("{what} is not valid JSON: {e}")),
    }
}

/// The same message, byte for byte or (written differently) as JSON values.
pub fn same_message(a: &RawValue, b: &RawValue) -> bool {
    a.get() == b.get()
        || matches!(
            (
                serde_json::from_str::<Value>(a.get()),
                serde_json::from_str::<Value>(b.get()),
            ),
            (Ok(x), Ok(y)) if x == y
        )
}

/// A chat history as it crosses the boundary: the text of the last chat
/// call's message array and the reply that call got. The next call must
/// start with both (append-only). When the guest writes the known messages
/// the same way as last time (any deterministic JSON encoder does), that is
/// one byte compare, and only the messages from the reply on are split;
/// otherwise every message is compared, as JSON values where written
/// differently.
#[derive(Debug, Default)]
pub struct History {
    /// The last call's array text up to its last message (no closing `]`).
    sent: String,
    /// How many messages `sent` holds.
    sent_len: usize,
    /// The reply to the last call; `None` before the first call.
    reply: Option<Message>,
}

impl History {
    /// Checks that `next`, a chat call's JSON array of message objects,
    /// extends this history; returns how many messages it holds.
    pub fn check_next(&self, next: &str) -> Result<usize, String> {
        let Some(reply) = &self.reply else {
            return split_messages(next, "messages").map(|m| m.len());
        };
        if let Some(tail) = self.tail_after_sent(next)
            && let Ok(tail) = split_messages(&tail, "messages")
            && tail.first().is_some_and(|first| same_message(first, reply))
        {
            return Ok(self.sent_len + tail.len());
        }
        let messages = split_messages(next, "messages")?;
        let known_text = self.known_text();
        let known = split_messages(&known_text, "history")?;
        if messages.len() < known.len() + 1 {
            return Err(format!(
                "history is not append-only: {} messages, but the previous call's history plus its reply had {}",
                messages.len(),
                known.len() + 1
            ));
        }
        match first_difference(known.iter().copied().chain([&**reply]), &messages) {
            Some(i) => Err(format!(
                "history is not append-only: message {i} differs from the one the previous call sent or received"
            )),
            None => Ok(messages.len()),
        }
    }

    /// `next` from its first message after `sent` on, as an array's text,
    /// when `next` starts with `sent` byte for byte.
    fn tail_after_sent(&self, next: &str) -> Option<String> {
        let rest = next.strip_prefix(self.sent.as_str())?;
        let rest = if self.sent_len == 0 {
            rest
        } else {
            rest.trim_start().strip_prefix(',')?
        };
        Some(format!("[{rest}"))
    }

    /// The last call's message array (checked when it was sent).
    fn known_text(&self) -> String {
        let mut text = String::with_capacity(self.sent.len() + 1);
        text.push_str(&self.sent);
        text.push(']');
        text
    }

    /// After a chat call with `next` (checked by [`check_next`], `count`
    /// messages) got `reply`.
    ///
    /// [`check_next`]: Self::check_next
    pub fn extend(&mut self, next: &str, count: usize, reply: Message) {
        let open = next.trim_end();
        let open = open.strip_suffix(']').unwrap_or(open).trim_end();
        self.sent.clear();
        self.sent.push_str(open);
        self.sent_len = count;
        self.reply = Some(reply);
    }

    /// The last call's messages and its reply; empty before the first call.
    pub fn messages(&self) -> Vec<Message> {
        let Some(reply) = &self.reply else {
            return Vec::new();
        };
        let text = self.known_text();
        let mut messages: Vec<Message> = split_messages(&text, "history")
            .map(|m| m.into_iter().map(|m| m.to_owned()).collect())
            .unwrap_or_default();
        messages.push(reply.clone());
        messages
    }
}

/// The index of the first of `messages` that is not the same message as
/// the one at its place in `expected` (compared as far as both go).
pub fn first_difference<'a>(
    expected: impl IntoIterator<Item = &'a RawValue>,
    messages: &[&RawValue],
) -> Option<usize> {
    expected
        .into_iter()
        .zip(messages)
        .position(|(a, b)| !same_message(a, b))
}

/// Each message's JSON text, encoded once (the host's own messages, e.g.
/// the init request's); `json_text` of the result is the array's text.
pub fn message_texts(values: &[Value]) -> Vec<Message> {
    // Encoding a `Value` cannot fail (its map keys are strings).
    values
        .iter()
        .filter_map(|m| serde_json::value::to_raw_value(m).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_split_without_decoding_and_bad_ones_named() {
        let text = r#"[{"role": "user", "content": "2 + 3?"}, {"role":"assistant","content":"5"}]"#;
        let split = split_messages(text, "messages").unwrap();
        assert_eq!(split.len(), 2);
        assert_eq!(split[0].get(), r#"{"role": "user", "content": "2 + 3?"}"#);
        for (bad, says) in [
            ("{}", "messages must be a JSON array of message objects"),
            (
                r#"[{"role": "user"}, "hi"]"#,
                "messages must be a JSON array of message objects",
            ),
            ("[{\"role\": ", "messages is not valid JSON"),
        ] {
            let e = split_messages(bad, "messages").unwrap_err();
            assert!(e.starts_with(says), "{bad}: {e}");
        }
    }

    fn raw(s: &str) -> Message {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn a_history_must_be_extended_by_each_call() {
        let mut h = History::default();
        assert!(h.messages().is_empty());
        // First call: any array of message objects.
        let first = r#"[{"role":"system","content":"calc"},{"role":"user","content":"2+3?"}]"#;
        assert_eq!(h.check_next(first), Ok(2));
        assert!(h.check_next("[1]").is_err());
        h.extend(first, 2, raw(r#"{"content":"5","role":"assistant"}"#));
        assert_eq!(h.messages().len(), 3);
        assert_eq!(
            h.messages()[2].get(),
            r#"{"content":"5","role":"assistant"}"#
        );

        let known = r#"[{"role":"system","content":"calc"},{"role":"user","content":"2+3?"},{"content":"5","role":"assistant"}"#;
        // Written the same way: the known part, the reply, new messages.
        let next = format!(r#"{known},{{"role":"user","content":"and 2+4?"}}]"#);
        assert_eq!(h.check_next(&next), Ok(4));
        assert_eq!(h.check_next(&format!("{known}]")), Ok(3));
        assert_eq!(
            h.check_next(&format!("{known} ,{{\"role\":\"user\"}} ]")),
            Ok(4)
        );
        // Written differently (spaces, key order): compared as values.
        let spaced = r#"[ {"content": "calc", "role": "system"}, {"role": "user", "content": "2+3?"},
            {"role": "assistant", "content": "5"}, {"role": "user", "content": "and 2+4?"} ]"#;
        assert_eq!(h.check_next(spaced), Ok(4));
        // Not an extension: the reply missing, a message changed, garbage.
        let short = r#"[{"role":"system","content":"calc"},{"role":"user","content":"2+3?"}]"#;
        assert_eq!(
            h.check_next(short).unwrap_err(),
            "history is not append-only: 2 messages, but the previous call's history plus its reply had 3"
        );
        let changed = format!(r#"{}]"#, known.replace("2+3?", "2+4?"));
        assert!(
            h.check_next(&changed)
                .unwrap_err()
                .contains("message 1 differs")
        );
        let wrong_reply = known.replace(r#""5""#, r#""6""#) + "]";
        assert!(
            h.check_next(&wrong_reply)
                .unwrap_err()
                .contains("message 2 differs")
        );
        let cut = &next[..next.len() - 3];
        assert!(
            h.check_next(cut)
                .unwrap_err()
                .starts_with("messages is not valid JSON")
        );

        // The next call is checked against what this one sent, as written.
        h.extend(spaced, 4, raw(r#"{"content":"6","role":"assistant"}"#));
        let after = format!(
            "{}, {{\"content\":\"6\",\"role\":\"assistant\"}}]",
            spaced.trim_end().trim_end_matches(']').trim_end()
        );
        assert_eq!(h.check_next(&after), Ok(5));
        assert_eq!(h.messages().len(), 5);
    }

    #[test]
    fn a_history_that_started_empty() {
        let mut h = History::default();
        assert_eq!(h.check_next("[ ]"), Ok(0));
        h.extend("[ ]", 0, raw(r#"{"content":"hi","role":"assistant"}"#));
        assert_eq!(
            h.check_next(r#"[{"content":"hi","role":"assistant"},{"role":"user","content":"x"}]"#),
            Ok(2)
        );
        assert!(h.check_next(r#"[{"role":"user","content":"x"}]"#).is_err());
        assert_eq!(h.messages().len(), 1);
    }

    #[test]
    fn the_same_message_written_differently_is_the_same() {
        let compact = raw(r#"{"content":"5","role":"assistant"}"#);
        let spaced = raw(r#"{ "role": "assistant", "content": "5" }"#);
        let other = raw(r#"{"role":"assistant","content":"6"}"#);
        assert!(same_message(&compact, &compact));
        assert!(same_message(&compact, &spaced));
        assert!(!same_message(&compact, &other));
    }
}
