//! The one error type of the client layer.
//!
//! It separates "the service said no" ([`ApiError::Service`]: an HTTP status with RingCentral's
//! `errorCode` and `message`) from "the client failed" (transport, timeout, decode, a changed
//! download) and from local problems (credentials, configuration, the state file). Callers retry
//! and map to errno differently for each. No variant ever carries a token or a secret: messages
//! are built from the service's `errorCode`/`message` fields and our own context strings only.

use std::path::PathBuf;

/// Everything that can go wrong in [`crate::api`].
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The service answered with a non-success status.
    #[error(
        "{context}: service answered {status}{}: {message}",
        code_suffix(error_code)
    )]
    Service {
        /// HTTP status code.
        status: u16,
        /// RingCentral's `errorCode` (e.g. `CMN-102`, `OAU-213`), when the body carried one.
        error_code: Option<String>,
        /// RingCentral's `message` (or OAuth `error_description`); empty when absent.
        message: String,
        /// What the client was doing ("GET call-log", "recording 123 metadata").
        context: String,
    },
    /// The request did not complete: connection refused/reset, TLS, a body cut short.
    #[error("{context}: transport error")]
    Transport {
        /// What the client was doing.
        context: String,
        /// The underlying error (URLs in it never carry tokens: tokens travel in headers).
        #[source]
        source: reqwest::Error,
    },
    /// Connecting, waiting for response headers, or waiting for the next body chunk took longer
    /// than the configured timeout.
    #[error("{context}: timed out {what}")]
    Timeout {
        /// What the client was doing.
        context: String,
        /// Which wait timed out ("waiting for response headers", "waiting for body data").
        what: &'static str,
    },
    /// The service answered 2xx but the body was not what the contract describes.
    #[error("{context}: cannot decode response: {detail}")]
    Decode {
        /// What the client was doing.
        context: String,
        /// What was wrong with the body.
        detail: String,
    },
    /// A media response contradicts itself or the request: a range that does not start where
    /// asked, a length that does not match its range, more bytes than announced.
    #[error("{context}: inconsistent media response: {detail}")]
    ContentMismatch {
        /// What the client was doing.
        context: String,
        /// The mismatch.
        detail: String,
    },
    /// A body ended cleanly before the length its headers announced (a server that closed
    /// early): another request may well get the rest.
    #[error("{context}: {detail}")]
    Truncated {
        /// What the client was doing.
        context: String,
        /// Where it ended.
        detail: String,
    },
    /// Missing or unusable credentials (names the setting, never its value).
    #[error("credentials: {0}")]
    Credentials(String),
    /// Invalid client configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// Reading or writing the token state file failed.
    #[error("state file {}: {source}", path.display())]
    StateFile {
        /// The state file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// An error and its sources, each once: `a: b: c`. For log lines and messages built from an
/// error; the `Display` of an error with a source says only its own part (anyhow's `{:#}`
/// prints the chain the same way).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let part = s.to_string();
        if !out.ends_with(&part) {
            out.push_str(": ");
            out.push_str(&part);
        }
        next = s.source();
    }
    out
}

fn code_suffix(code: &Option<String>) -> String {
    match code {
        Some(c) => format!(" {c}"),
        None => String::new(),
    }
}

impl ApiError {
    /// The HTTP status when the service answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Service { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// RingCentral's `errorCode` when the service gave one.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            ApiError::Service { error_code, .. } => error_code.as_deref(),
            _ => None,
        }
    }

    /// The service said the resource does not exist (404; e.g. `CMN-102`, also for a recording
    /// whose call is still going on).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The service refused access (403, e.g. `CMN-401`: the account call log needs an admin).
    pub fn is_forbidden(&self) -> bool {
        self.status() == Some(403)
    }

    /// True when the service answered (as opposed to the client failing to talk to it).
    pub fn is_service(&self) -> bool {
        matches!(self, ApiError::Service { .. })
    }

    /// True when retrying the same request later may succeed: transport problems, timeouts,
    /// 429 and 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Service { status, .. } => *status == 429 || *status >= 500,
            ApiError::Transport { .. } | ApiError::Timeout { .. } | ApiError::Truncated { .. } => {
                true
            }
            _ => false,
        }
    }

    /// Builds a service error from a status and a (possibly empty, possibly non-JSON) error body
    /// of either shape: `{"errorCode","message","errors":[..]}` or the OAuth
    /// `{"error","error_description","errors":[..]}`.
    pub(crate) fn from_body(status: u16, body: &[u8], context: impl Into<String>) -> ApiError {
        let (error_code, message) = parse_error_body(body);
        ApiError::Service {
            status,
            error_code,
            message,
            context: context.into(),
        }
    }
}

/// Extracts `(errorCode, message)` from an error body; tolerant of any shape.
pub(crate) fn parse_error_body(body: &[u8]) -> (Option<String>, String) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (None, String::new());
    };
    let first = v.get("errors").and_then(|e| e.get(0));
    let code = v
        .get("errorCode")
        .and_then(|c| c.as_str())
        .or_else(|| {
            first
                .and_then(|f| f.get("errorCode"))
                .and_then(|c| c.as_str())
        })
        .map(str::to_owned);
    let message = v
        .get("message")
        .and_then(|c| c.as_str())
        .or_else(|| {
            first
                .and_then(|f| f.get("message"))
                .and_then(|c| c.as_str())
        })
        .or_else(|| v.get("error_description").and_then(|c| c.as_str()))
        .or_else(|| v.get("error").and_then(|c| c.as_str()))
        .unwrap_or_default()
        .to_owned();
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_api_error_body() {
        let body = br#"{"errorCode":"CMN-102","message":"Resource not found","errors":[{"errorCode":"CMN-102","message":"x"}]}"#;
        let e = ApiError::from_body(404, body, "GET recording 1");
        assert_eq!(e.status(), Some(404));
        assert_eq!(e.error_code(), Some("CMN-102"));
        assert!(e.is_not_found() && e.is_service() && !e.is_forbidden());
        assert_eq!(
            e.to_string(),
            "GET recording 1: service answered 404 CMN-102: Resource not found"
        );
    }

    #[test]
    fn parses_oauth_error_body() {
        let body = br#"{"error":"invalid_grant","error_description":"Token is expired","errors":[{"errorCode":"OAU-211","message":"Token is revoked"}]}"#;
        let e = ApiError::from_body(400, body, "token refresh");
        assert_eq!(e.error_code(), Some("OAU-211"));
        assert!(e.to_string().contains("Token is revoked"));
        let body = br#"{"error":"invalid_grant","error_description":"Token is expired"}"#;
        let e = ApiError::from_body(400, body, "token refresh");
        assert_eq!(e.error_code(), None);
        assert!(e.to_string().ends_with("Token is expired"));
    }

    #[test]
    fn tolerates_garbage_bodies() {
        for body in [&b""[..], b"<html>oops</html>", b"{\"errors\":5}", b"[1,2]"] {
            let e = ApiError::from_body(502, body, "x");
            assert_eq!(e.status(), Some(502));
            assert!(e.is_transient());
        }
        let e = ApiError::from_body(403, b"{}", "x");
        assert!(e.is_forbidden() && !e.is_transient());
    }
}
