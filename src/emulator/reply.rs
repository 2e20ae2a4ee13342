//! Answers in RingCentral's shapes: JSON bodies, the API's error bodies (`errorCode`, `message`,
//! `errors`), OAuth's (`error`, `error_description`) and the run of 5xx answers.
//!
//! Every handler answers its errors with these, so that a client meets the same bodies as from
//! the real service. Nothing here knows the emulator's state.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

pub(super) fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
        bytes,
    )
        .into_response()
}

/// `{"errorCode","message","errors":[{"errorCode","message"}]}`.
pub(super) fn rc_error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({"errorCode": code, "message": message, "errors": [{"errorCode": code, "message": message}]}),
    )
}

/// 400 `CMN-101` for one query parameter.
pub(super) fn param_error(name: &str, value: &str) -> Response {
    let message = format!("Parameter [{name}] value is invalid");
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"errorCode": "CMN-101", "message": message, "parameterName": name, "parameterValue": value,
                "errors": [{"errorCode": "CMN-101", "message": message, "parameterName": name, "parameterValue": value}]}),
    )
}

pub(super) fn not_found(name: &str, value: &str) -> Response {
    let message = format!("Resource for parameter [{name}] is not found");
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"errorCode": "CMN-102", "message": message,
                "errors": [{"errorCode": "CMN-102", "message": message, "parameterName": name, "parameterValue": value}]}),
    )
}

pub(super) fn oauth_error(
    status: StatusCode,
    error: &str,
    code: &str,
    description: &str,
) -> Response {
    json_response(
        status,
        &json!({"error": error, "error_description": description,
                "errors": [{"errorCode": code, "message": description}]}),
    )
}

/// The `n`-th of a run of 5xx answers: 503 `CMN-201` with `Retry-After: 1`, 500, 502 in turn.
pub(super) fn server_error(n: u64) -> Response {
    match n % 3 {
        0 => {
            let mut r = rc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "CMN-201",
                "Service Temporary Unavailable",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
            r
        }
        1 => (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response(),
        _ => (
            StatusCode::BAD_GATEWAY,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
        )
            .into_response(),
    }
}

pub(super) fn too_many_requests(retry_after: Option<Duration>) -> Response {
    let mut r = rc_error(
        StatusCode::TOO_MANY_REQUESTS,
        "CMN-301",
        "Request rate exceeded",
    );
    if let Some(d) = retry_after {
        let secs = d.as_millis().div_ceil(1000).max(1) as u64;
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}
