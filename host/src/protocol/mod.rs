//! The Remote Rollout protocol v1 on the wire: request validation, response
//! bodies and the FastAPI-shaped error body. Nothing here knows about wasm;
//! a later protocol version can sit beside this module.

#[cfg(test)]
mod fuzz;
mod messages;
mod request;
mod response;
mod validation;

pub use messages::{History, Message, first_difference, message_texts, split_messages};
pub use request::{RolloutRequest, parse_init_request};
pub use response::{Metrics, RolloutResponse, RolloutStatus, Tool};
pub use validation::{ValidationError, ValidationErrors};

/// JSON text of parsed JSON. Encoding `serde_json` values cannot fail (map
/// keys are strings), and `serde_json::to_string` is several times faster
/// than `Value::to_string`, which goes through `fmt::Formatter`.
pub fn json_text<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
