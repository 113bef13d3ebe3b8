//! Payload validation: JSON bodies are read as a plain object and checked
//! field by field, so every refusal names the field and says what was wrong
//! (serde's derive errors name the expected type but often not the field).
//! Nothing reaches the store until the whole payload has passed.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::store::workers::STATUSES;

/// A request body that is a JSON object (size limited by `DefaultBodyLimit`).
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if let Some(ct) = req.headers().get(CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
            if !ct.starts_with("application/json") && !ct.contains("+json") {
                return Err(ApiError::UnsupportedMediaType);
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else {
                ApiError::field("body", r.body_text())
            }
        })?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(JsonObject(map)),
            Ok(_) => Err(ApiError::field("body", "expected a JSON object")),
            Err(e) => Err(ApiError::field("body", format!("invalid JSON: {e}"))),
        }
    }
}

/// Typed, bounded access to an object's fields. `null` counts as absent.
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub fn required<T>(name: &str, v: Option<T>) -> Result<T, ApiError> {
        v.ok_or_else(|| ApiError::field(name, "is required"))
    }

    /// A string of 1..=`max` characters with no control characters.
    pub fn text(&self, name: &str, max: usize) -> Result<Option<String>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let s = v
            .as_str()
            .ok_or_else(|| ApiError::field(name, "must be a string"))?
            .trim();
        check_text(name, s, max)?;
        Ok(Some(s.to_owned()))
    }

    /// An integer in `min..=max` (floats and numeric strings are refused).
    pub fn int(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            Some(_) | None if v.is_number() && v.as_f64().is_some_and(|f| f.fract() == 0.0) => Err(
                ApiError::field(name, format!("must be between {min} and {max}")),
            ),
            _ => Err(ApiError::field(
                name,
                format!("must be an integer between {min} and {max}"),
            )),
        }
    }

    /// A finite number in `min..=max`.
    pub fn num(&self, name: &str, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        match v.as_f64() {
            Some(n) if n.is_finite() && (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::field(
                name,
                format!("must be a number between {min} and {max}"),
            )),
        }
    }
}

pub fn check_text(name: &str, s: &str, max: usize) -> Result<(), ApiError> {
    if s.is_empty() {
        return Err(ApiError::field(name, "must not be empty"));
    }
    if s.chars().count() > max {
        return Err(ApiError::field(
            name,
            format!("must be at most {max} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::field(name, "must not contain control characters"));
    }
    Ok(())
}

/// A host name or IP address as a worker would be reached by.
pub fn check_host(name: &str, s: &str) -> Result<(), ApiError> {
    check_text(name, s, 255)?;
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']'));
    if !ok {
        return Err(ApiError::field(
            name,
            "must be a host name or IP address (letters, digits, . - _ : [ ])",
        ));
    }
    Ok(())
}

/// A service type: it becomes a URL path segment (`/api/v1/{serviceType}`).
pub fn check_service_type(name: &str, s: &str) -> Result<(), ApiError> {
    check_text(name, s, 64)?;
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        return Err(ApiError::field(name, "use letters, digits, - and _ only"));
    }
    Ok(())
}

/// Path segments under `/api/v1/` that are the API's own routes, so no
/// service type may take them (its dispatch route would be unreachable).
pub const RESERVED_SERVICE_TYPES: [&str; 4] = ["worker", "workers", "usage", "keys"];

/// A service type a worker may register under: valid, and not one of
/// [`RESERVED_SERVICE_TYPES`].
pub fn check_new_service_type(name: &str, s: &str) -> Result<(), ApiError> {
    check_service_type(name, s)?;
    if RESERVED_SERVICE_TYPES.contains(&s) {
        return Err(ApiError::field(
            name,
            format!(
                "{s:?} is reserved for the API's own routes ({})",
                RESERVED_SERVICE_TYPES.join(", ")
            ),
        ));
    }
    Ok(())
}

/// One of [`STATUSES`], as the static string stored.
pub fn check_status(name: &str, s: &str) -> Result<&'static str, ApiError> {
    STATUSES
        .iter()
        .copied()
        .find(|&st| st == s)
        .ok_or_else(|| ApiError::field(name, format!("must be one of {}", STATUSES.join(", "))))
}

/// A positive row id from a path segment.
pub fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| ApiError::field("id", "must be a positive integer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn integers_are_typed_and_bounded() {
        let m = fields(json!({"a": 8080, "b": "8080", "c": 1.5, "d": 70000, "e": null}));
        let f = Fields(&m);
        assert_eq!(f.int("a", 1, 65535).unwrap(), Some(8080));
        assert!(f.int("b", 1, 65535).is_err());
        assert!(f.int("c", 1, 65535).is_err());
        let e = f.int("d", 1, 65535).unwrap_err();
        assert!(e.to_string().starts_with("d:"), "{e}");
        assert_eq!(f.int("e", 1, 2).unwrap(), None);
    }

    #[test]
    fn text_checks() {
        let long = "x".repeat(129);
        let m =
            fields(json!({"ok": " w1 ", "long": long, "ctl": "a\u{7}b", "num": 3, "empty": ""}));
        let f = Fields(&m);
        assert_eq!(f.text("ok", 128).unwrap().as_deref(), Some("w1"));
        for name in ["long", "ctl", "num", "empty"] {
            assert!(f.text(name, 128).is_err(), "{name}");
        }
        assert!(check_host("host", "10.0.0.1").is_ok());
        assert!(check_host("host", "[::1]").is_ok());
        assert!(check_host("host", "a b").is_err());
        assert!(check_service_type("serviceType", "render").is_ok());
        assert!(check_service_type("serviceType", "ren/der").is_err());
        assert!(check_new_service_type("serviceType", "usage").is_err());
        assert!(check_new_service_type("serviceType", "combo").is_ok());
        assert_eq!(check_status("status", "busy").unwrap(), "busy");
        assert!(check_status("status", "sleeping").is_err());
        assert!(parse_id("0").is_err() && parse_id("x").is_err() && parse_id("7").is_ok());
    }
}
