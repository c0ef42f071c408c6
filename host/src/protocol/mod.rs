//! The Remote Rollout protocol v1 on the wire: request validation, response
//! bodies and the FastAPI-shaped error body. Nothing here knows about wasm;
//! a later protocol version can sit beside this module.

mod request;
mod response;
mod validation;

pub use request::{RolloutRequest, parse_init_request};
pub use response::{InitResponse, Metrics, RolloutResponse, RolloutStatus, Tool};
pub use validation::{ValidationError, ValidationErrors};
