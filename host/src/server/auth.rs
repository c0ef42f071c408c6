//! Incoming API-key auth: `Authorization: Bearer <key>` (or the raw key as
//! the whole header value, like the reference), compared in constant time.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use subtle::ConstantTimeEq;

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
