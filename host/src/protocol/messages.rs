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

    #[test]
    fn the_same_message_written_differently_is_the_same() {
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        let compact = raw(r#"{"content":"5","role":"assistant"}"#);
        let spaced = raw(r#"{ "role": "assistant", "content": "5" }"#);
        let other = raw(r#"{"role":"assistant","content":"6"}"#);
        assert!(same_message(&compact, &compact));
        assert!(same_message(&compact, &spaced));
        assert!(!same_message(&compact, &other));
    }
}
