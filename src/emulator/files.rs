//! The plain HTTP directory of the recordings on the media host, `/__emulator/files/`.
//!
//! Not a RingCentral path: an HTML index, then each file with `Content-Length` and `Range`,
//! without auth, rate limits or faults, for programs that only speak plain HTTP: generic HTTP
//! directory mounts, which `tests/bench` compares ringfs with. Its requests are counted in
//! [`Stats`](super::Stats) like the others, under endpoints of their own and no rate group.

use axum::body::Body;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::media::media_body;
use super::quirks::{RangeReq, parse_range};
use super::state::{Shared, State, fmt_ms, lock, now_ms, ts};

/// Path of the plain directory listing on the media host.
pub(super) const FILES_PATH: &str = "/__emulator/files/";

impl State {
    /// Counts one request to a non-RingCentral endpoint (no rate group).
    fn count(&self, endpoint: &str) {
        *lock(&self.stats)
            .by_endpoint
            .entry(endpoint.to_string())
            .or_default() += 1;
    }

    /// `(recording id, extension, size, call start ms)` of every recording fetchable at `now`,
    /// sorted by id.
    fn fetchable_files(&self, now: i64) -> Vec<(String, &'static str, u64, i64)> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = data
            .calls
            .iter()
            .filter(|c| self.fetchable_ms(c) <= now)
            .filter_map(|c| {
                let r = c.recording.as_ref()?;
                Some((
                    r.id.clone(),
                    r.audio.codec.extension(),
                    r.audio.len(),
                    c.start_ms,
                ))
            })
            .collect();
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// `Last-Modified` for a file: the end of its call (HTTP-date).
fn http_date(ms: i64) -> String {
    ts(ms).strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// `GET /__emulator/files/`: an Apache-style HTML index, one `<a href="<id>.<ext>">` per
/// recording that can be fetched now, with its size in the text (peers take sizes from `HEAD`).
/// Links are relative, as in Apache's indexes: some directory clients ask for the index without
/// the slash and append the links to that URL; a browser needs the slash.
pub(super) async fn files_index(AxState(st): AxState<Shared>) -> Response {
    st.count("files-index");
    st.advance_live(now_ms());
    let files = st.fetchable_files(now_ms());
    let mut html = String::with_capacity(200 + files.len() * 120);
    html.push_str(
        "<!DOCTYPE html>\n<html><head><title>Index of /__emulator/files/</title></head><body>\n",
    );
    html.push_str("<h1>Index of /__emulator/files/</h1>\n<pre>\n");
    for (id, ext, len, start) in &files {
        // Ids are digits and extensions ASCII: nothing to escape.
        html.push_str(&format!(
            "<a href=\"{id}.{ext}\">{id}.{ext}</a> {} {len}\n",
            fmt_ms(*start)
        ));
    }
    html.push_str("</pre></body></html>\n");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

/// `GET`/`HEAD /__emulator/files/<id>.<ext>`: the recording's bytes (the same as its
/// `contentUri`), with `Content-Length`, `Accept-Ranges`, `Range` -> 206 / 416 and
/// `Last-Modified`. Plain HTTP: no auth, no rate limit, no faults, no media behaviour settings.
pub(super) async fn files_get(
    AxState(st): AxState<Shared>,
    method: axum::http::Method,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let head = method == axum::http::Method::HEAD;
    st.count(if head { "files-head" } else { "files-get" });
    st.advance_live(now_ms());
    let plain_404 = || {
        (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain")],
            "not found\n",
        )
            .into_response()
    };
    let Some((id, ext)) = name.rsplit_once('.') else {
        return plain_404();
    };
    let Some((audio, _, fetchable, _)) = st.recording(id).filter(|r| r.2 <= now_ms()) else {
        return plain_404();
    };
    if ext != audio.codec.extension() {
        return plain_404();
    }
    let len = audio.len();
    let (status, start, end) = match parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        len,
    ) {
        RangeReq::Whole => (StatusCode::OK, 0, len),
        RangeReq::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b),
        RangeReq::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response();
        }
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, audio.codec.content_type())
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::LAST_MODIFIED, http_date(fetchable));
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1),
        );
    }
    // HEAD: the headers only (hyper keeps an explicit Content-Length on an empty HEAD answer).
    let body = if head {
        Body::empty()
    } else {
        media_body(st.clone(), audio, start, end, Vec::new(), None)
    };
    builder
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
