//! Recordings: their metadata on the API host and their content on the media host.
//!
//! Recording content goes through the recording's [`MediaQuirks`] (see `quirks`): 404s and
//! 5xx it is refused with first, its Range handling, its speed cap and drop offsets; the
//! account-wide [`Faults`](super::Faults) apply on top.
//!
//! Bodies are never stored whole: [`media_body`] sends them block by block as they are
//! rendered (the render cache shares recently rendered blocks between responses, see
//! [`super::audio::RenderCache`]), at the speed cap if any. A body stream that yields an error makes hyper cut the connection
//! mid-body, which is how drop offsets and `drop_after_bytes` work.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::RangeMode;
use super::audio::AudioSpec;
use super::data::ACCOUNT_ID;
use super::quirks::{Answer, Cut, Gate, content_type, parse_range};
use super::reply::{json_response, not_found, rc_error, server_error};
use super::state::{Group, Shared, account_ok, bases, lock, now_ms};

pub(super) async fn recording_meta(
    AxState(st): AxState<Shared>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    st.gated("recording-meta", Group::Heavy, || {
        if let Err(r) = st.authorize(&headers, None) {
            return r;
        }
        if !account_ok(&account) {
            return not_found("accountId", &account);
        }
        match st.recording(&id) {
            Some((audio, visible, _, duration)) if visible <= now_ms() => {
                let (api, media) = bases(&st, &headers);
                json_response(
                    StatusCode::OK,
                    &json!({
                        "uri": format!("{api}/restapi/v1.0/account/{ACCOUNT_ID}/recording/{id}"),
                        "id": id,
                        "contentUri": format!("{media}/restapi/v1.0/account/{ACCOUNT_ID}/recording/{id}/content"),
                        "contentType": st.content_type(&id, audio),
                        "duration": duration,
                    }),
                )
            }
            _ => not_found("recordingId", &id),
        }
    })
}

/// Bytes sent per body chunk at most: one rendered block.
const CHUNK: u64 = super::audio::RenderCache::BLOCK;

/// The body of a media response: generated chunk by chunk, with the speed cap and the cuts
/// (in order of `at`; a cut that another response fired first is passed over).
pub(super) fn media_body(
    st: Shared,
    audio: AudioSpec,
    start: u64,
    end: u64,
    cuts: Vec<Cut>,
    rate: Option<u64>,
) -> Body {
    struct S {
        st: Shared,
        audio: AudioSpec,
        pos: u64,
        end: u64,
        sent: u64,
        /// Pending cuts, the next one last.
        cuts: Vec<Cut>,
        rate: Option<u64>,
        began: Instant,
        done: bool,
    }
    let mut cuts = cuts;
    cuts.sort_unstable_by_key(|c| std::cmp::Reverse(c.at));
    let s = S {
        st,
        audio,
        pos: start,
        end,
        sent: 0,
        cuts,
        rate,
        began: Instant::now(),
        done: false,
    };
    let stream = futures_util::stream::unfold(s, |mut s| async move {
        if s.done || s.pos >= s.end {
            return None;
        }
        while s.cuts.last().is_some_and(|c| s.sent >= c.at) {
            if s.cuts.pop().is_some_and(|c| c.claim()) {
                // Pause first so hyper flushes the headers and bytes already produced: the client
                // must see a response that breaks off, not a connection that never answered.
                tokio::time::sleep(Duration::from_millis(50)).await;
                s.done = true;
                s.st.fault_injected();
                tracing::debug!(sent = s.sent, "media connection cut");
                return Some((Err(std::io::Error::other("emulated connection drop")), s));
            }
        }
        // Up to the end of the rendered block `pos` is in, so each piece is one slice of it.
        let within = s.pos % CHUNK;
        let mut n = (s.end - s.pos).min(CHUNK - within);
        if let Some(c) = s.cuts.last() {
            n = n.min(c.at - s.sent);
        }
        if let Some(rate) = s.rate.filter(|&r| r > 0) {
            n = n.min((rate / 20).max(512));
            let due = s.began + Duration::from_secs_f64(s.sent as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let block = s.st.renders.block(s.audio, s.pos / CHUNK);
        let piece = block.slice(within as usize..(within + n) as usize);
        s.pos += n;
        s.sent += n;
        s.st.bytes_served.fetch_add(n, Ordering::Relaxed);
        Some((Ok::<Bytes, std::io::Error>(piece), s))
    });
    Body::from_stream(stream)
}

pub(super) async fn recording_content(
    AxState(st): AxState<Shared>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    *lock(&st.stats)
        .media_by_recording
        .entry(id.clone())
        .or_default() += 1;
    let st2 = st.clone();
    st.gated("recording-content", Group::Heavy, move || {
        let params: HashMap<String, String> =
            url::form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        if let Err(r) = st2.authorize(&headers, params.get("access_token").map(String::as_str)) {
            return r;
        }
        if !account_ok(&account) {
            return not_found("accountId", &account);
        }
        let Some((audio, _, fetchable, _)) = st2.recording(&id).filter(|r| r.2 <= now_ms()) else {
            return not_found("recordingId", &id);
        };
        let len = audio.len();
        let quirks = st2.quirks_of(&id, len);
        match st2.quirks.gate(&id, &quirks) {
            Gate::NotFound => {
                tracing::debug!(recording = %id, "404: still processed (quirk)");
                return not_found("recordingId", &id);
            }
            Gate::ServerError(n) => {
                tracing::debug!(recording = %id, "5xx (quirk)");
                st2.fault_injected();
                return server_error(n);
            }
            Gate::Serve => {}
        }
        let (status, start, end, total_known) = match quirks.answer(parse_range(
            headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
            len,
        )) {
            Answer::Whole => (StatusCode::OK, 0, len, true),
            Answer::Part {
                start,
                end,
                total_known,
            } => (StatusCode::PARTIAL_CONTENT, start, end, total_known),
            Answer::Unsatisfiable { content_range } => {
                let mut r = rc_error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "CMN-107",
                    "Requested range not satisfiable",
                );
                if content_range {
                    r.headers_mut().insert(
                        header::CONTENT_RANGE,
                        HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
                    );
                }
                return r;
            }
        };
        let faults = st2.faults();
        let body_len = end - start;
        let fraction = if faults.drop_after_bytes.is_some() && faults.drop_fraction <= 0.0 {
            1.0
        } else {
            faults.drop_fraction
        };
        let fault_cut = st2
            .roll(fraction)
            .then(|| faults.drop_after_bytes.unwrap_or(body_len / 2))
            .filter(|&c| c < body_len);
        let mut cuts = st2.quirks.cuts(&id, &quirks, start, end);
        cuts.extend(fault_cut.map(Cut::always));
        tracing::debug!(recording = %id, start, end, fetchable, ?quirks, "media");
        let mut builder = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type(audio.codec, &quirks));
        if !quirks.chunked {
            builder = builder.header(header::CONTENT_LENGTH, body_len);
        } else if quirks.close_delimited {
            // hyper ends a body of unknown length by closing the connection, instead of
            // chunking it, in an HTTP/1.0 answer.
            builder = builder.version(axum::http::Version::HTTP_10);
        }
        if quirks.range != RangeMode::Ignore {
            builder = builder.header(header::ACCEPT_RANGES, "bytes");
        }
        if status == StatusCode::PARTIAL_CONTENT {
            let total = if total_known {
                len.to_string()
            } else {
                "*".to_string()
            };
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{total}", end - 1),
            );
        }
        if let Some(disposition) = params.get("contentDisposition") {
            let kind = if disposition.eq_ignore_ascii_case("attachment") {
                "attachment"
            } else {
                "inline"
            };
            let value = match params.get("contentDispositionFilename") {
                Some(name) => format!(
                    "{kind}; filename=\"{}\"",
                    name.replace(['"', '\\', '\r', '\n'], "_")
                ),
                None => kind.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                builder = builder.header(header::CONTENT_DISPOSITION, v);
            }
        }
        // The slower of the account-wide and the recording's speed cap.
        let rate = faults
            .max_bytes_per_sec
            .into_iter()
            .chain(quirks.bytes_per_sec)
            .min();
        builder
            .body(media_body(st2.clone(), audio, start, end, cuts, rate))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    })
}
