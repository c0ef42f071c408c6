//! Incoming API-key auth: `Authorization: Bearer <key>` (or the raw key as
//! the whole header value, like the reference), compared in constant time.

use super::json_error;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use subtle::ConstantTimeEq;

/// The refusal of a route that exists only when a secret is configured
/// (`/platform/health` with `--api-key`, the admin API with
/// `--admin-token`): 404 while it is not, 401 when the request lacks it
/// (`what` names it); `None` lets the request through.
pub fn gate(expected: Option<&str>, headers: &HeaderMap, what: &str) -> Option<Response> {
    match expected {
        None => Some(json_error(StatusCode::NOT_FOUND, "Not Found")),
        Some(secret) if !authorized(secret, headers) => Some(json_error(
            StatusCode::UNAUTHORIZED,
            &format!("Invalid or missing {what}"),
        )),
        Some(_) => None,
    }
}

/// The 401 of a request without `expected`, when there is a key to
/// expect (init, rollout status and cancel).
pub fn require(expected: Option<&str>, headers: &HeaderMap) -> Option<Response> {
    let key = expected?;
    (!authorized(key, headers))
        .then(|| json_error(StatusCode::UNAUTHORIZED, "Invalid or missing API key"))
}

pub fn authorized(expected: &str, headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(AUTHORIZATION).map(|v| v.as_bytes()) else {
        return false;
    };
    let token = match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &value[7..],
        _ => value,
    };
    let bearer_ok = token.ct_eq(expected.as_bytes());
    let raw_ok = value.ct_eq(expected.as_bytes());
    (bearer_ok | raw_ok).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn bearer_and_raw_keys() {
        assert!(authorized("s3cret", &headers("Bearer s3cret")));
        assert!(authorized("s3cret", &headers("bearer s3cret")));
        assert!(authorized("s3cret", &headers("s3cret")));
        assert!(!authorized("s3cret", &headers("Bearer wrong")));
        assert!(!authorized("s3cret", &headers("Bearer s3cret2")));
        assert!(!authorized("s3cret", &HeaderMap::new()));
    }
}
