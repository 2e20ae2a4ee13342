//! One media response: a recording's content from an offset, exactly as the server sent it.
//!
//! A [`MediaStream`] is one `GET contentUri` (with `Range: bytes=N-` when the offset is past 0)
//! and its body. It never reconnects: resuming after a drop, and bounding how many requests a
//! read may spend on it, is the media layer's job (`crate::media`), the one place that sees all
//! the requests made for a recording. What this type does is read the answer right, because
//! the media host's headers are not documented and servers differ:
//!
//! - **The length is exact only when stated**: `Content-Length` of a 200, the total of a
//!   `Content-Range` (`bytes a-b/N` or `bytes */N`). A body without a length (chunked) ends at a
//!   clean end of the transfer and nowhere else; a dropped connection is an error, never an end.
//! - **A 200 to a ranged request** (the server ignored `Range`) carries the whole content from
//!   byte 0: the bytes before the offset are skipped, so the caller still gets bytes from the
//!   offset it asked for. If that body ends cleanly before the offset, the content is shorter
//!   than the offset and its length is now known.
//! - **A 206 may stop short of the end** (a server that caps ranges, or `bytes a-b/*` with the
//!   total untold): its clean end ends the response, not the content ([`BodyEnd::At`]).
//! - **416** with `bytes */N` tells the length; a bare 416 only says nothing exists at the
//!   offset ([`BodyEnd::PastEnd`]). Either answers with an empty body.
//! - **A body delimited by the connection** (no length, not chunked, as HTTP/1.0 servers send)
//!   cannot tell its end from a drop: its clean end is [`BodyEnd::Unconfirmed`], and the length
//!   is not learned from it.
//! - A body that delivers more than its headers announced, or ends cleanly before it, is an
//!   error (`ContentMismatch`), so no byte that is not the recording's is ever handed out.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use reqwest::header::{
    CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, HeaderMap, LAST_MODIFIED, TRANSFER_ENCODING,
};

use super::Priority;
use super::error::ApiError;
use super::pacer::RateGroup;
use super::transport::{Req, Transport};

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// What a clean end of a response body means for the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// The body runs to the end of the content: a clean end is the recording's end.
    Content,
    /// The body ends at this content offset (a 206's range); the content may go on after it.
    At(u64),
    /// Nothing exists at or after the requested offset (a 416 that did not tell the length).
    PastEnd,
    /// The body had no length and was not chunked: it ended when the server closed the
    /// connection, and a dropped connection ends it the same way. A clean end here is only a
    /// candidate for the content's end, to be confirmed by another answer.
    Unconfirmed,
}

/// One media response (see the module docs).
pub struct MediaStream {
    /// The request path, for reading the body with its stall timeout.
    transport: Transport,
    context: String,
    content_type: Option<String>,
    /// The content's exact length: stated by the server, or learned at a clean end of a body
    /// that started at byte 0.
    total_len: Option<u64>,
    end: BodyEnd,
    validator: Option<String>,
    /// Content offset of the next byte the body delivers (skipped bytes included).
    body_pos: u64,
    /// Content offset of the next byte handed out (the offset asked for, then onwards).
    position: u64,
    /// The body; `None` once it ended or failed (a failure is final).
    body: Option<Body>,
    /// When the request was sent (for the metrics' latencies).
    sent_at: std::time::Instant,
    first_byte_seen: bool,
    /// The body's end was counted in the download-time histogram.
    end_seen: bool,
    /// What the body skipped before the offset asked for (see [`Skipped`]).
    skipped: Skipped,
}

/// How many bytes of what a body skips [`Skipped`] keeps at its end.
pub const SKIPPED_TAIL: usize = 8 * 1024;
/// How many of the content's first bytes [`Skipped`] keeps.
pub const SKIPPED_HEAD: usize = 64;

/// The bytes a body delivered before the offset asked for, which a server that ignores `Range`
/// sends from byte 0: the content's first [`SKIPPED_HEAD`] bytes (when the body began at byte
/// 0) and the last [`SKIPPED_TAIL`] bytes skipped. When such a body ends before the offset, they
/// are the file's head and the bytes before its end: what a format states about its own length
/// (a WAV's RIFF header, an MP3's last frames) is read there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
}

impl Skipped {
    /// Takes in `bytes`, skipped, that start at content offset `at` and follow those taken in
    /// before.
    pub fn keep(&mut self, at: u64, bytes: &[u8]) {
        self.keep_head(at, bytes);
        self.keep_tail(bytes);
    }

    /// Takes in what of `bytes` (starting at content offset `at`) belongs to the head.
    pub fn keep_head(&mut self, at: u64, bytes: &[u8]) {
        if at < SKIPPED_HEAD as u64 && at == self.head.len() as u64 {
            let n = (SKIPPED_HEAD - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..n]);
        }
    }

    /// Takes in `bytes` as the newest skipped: they follow those taken in before, or are at
    /// least [`SKIPPED_TAIL`] long (what came before is then no longer needed).
    pub fn keep_tail(&mut self, bytes: &[u8]) {
        if bytes.len() >= SKIPPED_TAIL {
            self.tail.clear();
        }
        let from = bytes.len().saturating_sub(SKIPPED_TAIL);
        self.tail.extend_from_slice(&bytes[from..]);
        if self.tail.len() > 2 * SKIPPED_TAIL {
            let extra = self.tail.len() - SKIPPED_TAIL;
            self.tail.drain(..extra);
        }
    }

    /// The last [`SKIPPED_TAIL`] bytes kept.
    pub fn tail(&self) -> &[u8] {
        &self.tail[self.tail.len().saturating_sub(SKIPPED_TAIL)..]
    }
}

impl std::fmt::Debug for MediaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaStream")
            .field("context", &self.context)
            .field("content_type", &self.content_type)
            .field("total_len", &self.total_len)
            .field("end", &self.end)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

/// What the headers of a 2xx or 416 answer said.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    /// Content offset of the body's first byte.
    start: u64,
    /// The content's length, when stated.
    total: Option<u64>,
    end: BodyEnd,
}

/// A `Content-Range`: the byte range `(first, last)` if given, and the total length if known.
type ContentRange = (Option<(u64, u64)>, Option<u64>);

/// `bytes a-b/N`, `bytes a-b/*` or `bytes */N`.
fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let range = match range.trim() {
        "*" => None,
        r => {
            let (a, b) = r.split_once('-')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        }
    };
    Some((range, total))
}

fn header(h: &HeaderMap, name: reqwest::header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Interprets the status and headers of an answer to a request for bytes from `asked`.
fn interpret(status: u16, headers: &HeaderMap, asked: u64) -> Result<Answer, String> {
    match status {
        206 => {
            let cr = header(headers, CONTENT_RANGE).ok_or("206 without Content-Range")?;
            let (range, total) =
                parse_content_range(cr).ok_or_else(|| format!("bad Content-Range {cr:?}"))?;
            let (a, b) = range.ok_or_else(|| format!("bad Content-Range {cr:?}"))?;
            if a > asked || b < a || b < asked {
                return Err(format!(
                    "asked for bytes from {asked}, got Content-Range {cr:?}"
                ));
            }
            if total.is_some_and(|t| b >= t) {
                return Err(format!("Content-Range {cr:?} beyond its total"));
            }
            if let Some(len) =
                header(headers, CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok())
                && len != b - a + 1
            {
                return Err(format!(
                    "Content-Length {len} does not match Content-Range {cr:?}"
                ));
            }
            let end = if total == Some(b + 1) {
                BodyEnd::Content
            } else {
                BodyEnd::At(b + 1)
            };
            Ok(Answer {
                start: a,
                total,
                end,
            })
        }
        416 => {
            let total = header(headers, CONTENT_RANGE)
                .and_then(parse_content_range)
                .and_then(|(_, t)| t);
            match total {
                Some(t) if t <= asked => Ok(Answer {
                    start: asked,
                    total: Some(t),
                    end: BodyEnd::Content,
                }),
                Some(t) => Err(format!(
                    "416 for bytes from {asked}, but the content is {t} bytes long"
                )),
                None => Ok(Answer {
                    start: asked,
                    total: None,
                    end: BodyEnd::PastEnd,
                }),
            }
        }
        _ => {
            // The whole content: Range was not asked for, or was ignored.
            let total = header(headers, CONTENT_LENGTH).and_then(|v| v.trim().parse().ok());
            Ok(Answer {
                start: 0,
                total,
                end: BodyEnd::Content,
            })
        }
    }
}

fn media_type(h: &HeaderMap) -> Option<String> {
    header(h, CONTENT_TYPE)
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|v| !v.is_empty())
}

impl MediaStream {
    /// Sends one request for the content from `offset` and reads its headers. Transient failures
    /// are returned, not retried: the caller owns the retry budget.
    pub(crate) async fn open(
        transport: Transport,
        uri: String,
        offset: u64,
        prio: Priority,
    ) -> Result<MediaStream, ApiError> {
        let context = format!("GET media {}", short_uri(&uri));
        let mut req = Req::get(uri, RateGroup::Heavy, context.clone());
        req.range_from = (offset > 0).then_some(offset);
        req.passthrough = &[416];
        req.retry_transient = false;
        let sent_at = std::time::Instant::now();
        let resp = transport.execute(&req, prio).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers();
        let mut answer =
            interpret(status, headers, offset).map_err(|detail| ApiError::ContentMismatch {
                context: context.clone(),
                detail,
            })?;
        let chunked = header(headers, TRANSFER_ENCODING)
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if status != 416 && answer.end == BodyEnd::Content && answer.total.is_none() && !chunked {
            answer.end = BodyEnd::Unconfirmed;
        }
        // A 416's headers describe its error body, not the recording.
        let content_type = if status == 416 {
            None
        } else {
            media_type(headers)
        };
        let validator = if status == 416 {
            None
        } else {
            header(headers, ETAG)
                .or_else(|| header(headers, LAST_MODIFIED))
                .map(str::to_owned)
        };
        if answer.start < offset {
            tracing::debug!(context = %context, offset, from = answer.start, "server ignored Range; skipping to the offset");
        }
        let body = if status == 416 {
            None
        } else {
            Some(Box::pin(resp.bytes_stream()) as Body)
        };
        Ok(MediaStream {
            transport,
            context,
            content_type,
            total_len: answer.total,
            end: answer.end,
            validator,
            body_pos: answer.start,
            position: offset,
            body,
            sent_at,
            first_byte_seen: false,
            end_seen: false,
            skipped: Skipped::default(),
        })
    }

    /// `audio/mpeg`, `audio/wav`, `audio/x-wav` or whatever the server said (lowercase, no
    /// parameters).
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// The whole content's exact length: as the server stated it, or as learned when a chunked
    /// body that ran from byte 0 ended cleanly. `None` while unknown.
    pub fn total_len(&self) -> Option<u64> {
        self.total_len
    }

    /// What a clean end of this body means.
    pub fn end(&self) -> BodyEnd {
        self.end
    }

    /// `ETag` (or `Last-Modified`) of the response: a different one on a later response means
    /// the content is not the same.
    pub fn validator(&self) -> Option<&str> {
        self.validator.as_deref()
    }

    /// Offset of the next byte [`MediaStream::next_chunk`] returns.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Where a body that ended cleanly stopped, when that is before the offset asked for (a
    /// whole body from byte 0, Range ignored, shorter than the offset): for a body delimited by
    /// its connection, the candidate end to confirm is there, not at the offset.
    pub fn ended_at(&self) -> Option<u64> {
        (self.body.is_none() && self.body_pos < self.position).then_some(self.body_pos)
    }

    /// What the body skipped before the offset asked for (see [`Skipped`]).
    pub fn skipped(&self) -> &Skipped {
        &self.skipped
    }

    /// The next bytes of the content, `None` at a clean end of the body (see [`BodyEnd`] for
    /// what that end means). An error (drop, stall, mismatch) is final for this response.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        loop {
            let Some(body) = self.body.as_mut() else {
                return Ok(None);
            };
            match self.transport.next_body_chunk(body, &self.context).await {
                Err(e) => {
                    self.body = None;
                    return Err(e);
                }
                Ok(Some(mut b)) => {
                    crate::metrics::BYTES_DOWNLOADED
                        .fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    if !self.first_byte_seen && !b.is_empty() {
                        self.first_byte_seen = true;
                        crate::metrics::FIRST_BYTE.observe(self.sent_at.elapsed());
                    }
                    let first = self.body_pos;
                    self.body_pos += b.len() as u64;
                    let limit = match self.end {
                        BodyEnd::At(e) => Some(e),
                        _ => self.total_len,
                    };
                    if let Some(limit) = limit
                        && self.body_pos > limit
                    {
                        self.body = None;
                        return Err(self.mismatch(format!("more bytes than the announced {limit}")));
                    }
                    // Readers stop at the content's end without waiting for the body's.
                    if limit == Some(self.body_pos) {
                        self.note_end();
                    }
                    if self.body_pos <= self.position {
                        self.skipped.keep(first, &b);
                        continue;
                    }
                    if first < self.position {
                        let cut = (self.position - first) as usize;
                        self.skipped.keep(first, &b[..cut]);
                        b = b.slice(cut..);
                    }
                    self.position = self.body_pos;
                    return Ok(Some(b));
                }
                Ok(None) => {
                    self.body = None;
                    let expected = match self.end {
                        BodyEnd::At(e) => Some(e),
                        _ => self.total_len,
                    };
                    match expected {
                        Some(e) if self.body_pos < e => {
                            return Err(ApiError::Truncated {
                                context: self.context.clone(),
                                detail: format!("body ended at byte {} of {e}", self.body_pos),
                            });
                        }
                        Some(_) => {}
                        // No length, chunked: this clean end (the last chunk) is the content's
                        // end (the body ran from byte 0, skipped bytes included), even before
                        // the offset asked for. Delimited by the connection: only a candidate.
                        None if self.end == BodyEnd::Content => {
                            self.total_len = Some(self.body_pos)
                        }
                        None => {}
                    }
                    self.note_end();
                    return Ok(None);
                }
            }
        }
    }

    /// Counts the download's time once, at the content's end or the body's clean end.
    fn note_end(&mut self) {
        if !self.end_seen {
            self.end_seen = true;
            crate::metrics::DOWNLOAD_TIME.observe(self.sent_at.elapsed());
        }
    }

    fn mismatch(&self, detail: String) -> ApiError {
        ApiError::ContentMismatch {
            context: self.context.clone(),
            detail,
        }
    }
}

/// The URI without its query (which could, with other servers, carry credentials).
fn short_uri(uri: &str) -> &str {
    uri.split('?').next().unwrap_or(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_bytes_keep_the_head_and_the_bytes_before_the_end() {
        let content: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 253) as u8).collect();
        for piece in [1usize, 63, 1000, SKIPPED_TAIL, 3 * SKIPPED_TAIL + 7] {
            for end in [0usize, 10, 64, 5000, SKIPPED_TAIL + 1, 100_000] {
                let mut s = Skipped::default();
                let mut at = 0;
                while at < end {
                    let to = (at + piece).min(end);
                    s.keep(at as u64, &content[at..to]);
                    at = to;
                }
                assert_eq!(s.head, content[..end.min(SKIPPED_HEAD)], "{piece} {end}");
                assert_eq!(s.tail(), &content[end.saturating_sub(SKIPPED_TAIL)..end]);
            }
        }
        // A body that began past byte 0 (a honoured Range) has no head.
        let mut s = Skipped::default();
        s.keep(500, &content[500..600]);
        assert!(s.head.is_empty());
        assert_eq!(s.tail(), &content[500..600]);
    }
    use reqwest::header::HeaderValue;

    fn h(pairs: &[(reqwest::header::HeaderName, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range("bytes 0-99/1000"),
            Some((Some((0, 99)), Some(1000)))
        );
        assert_eq!(
            parse_content_range("bytes 5-9/*"),
            Some((Some((5, 9)), None))
        );
        assert_eq!(
            parse_content_range("bytes */1000"),
            Some((None, Some(1000)))
        );
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes x-1/2"), None);
    }

    #[test]
    fn interprets_answers() {
        let a = interpret(206, &h(&[(CONTENT_RANGE, "bytes 100-999/1000")]), 100).unwrap();
        assert_eq!(
            a,
            Answer {
                start: 100,
                total: Some(1000),
                end: BodyEnd::Content
            }
        );
        // A capped range: the response ends before the content does.
        let a = interpret(206, &h(&[(CONTENT_RANGE, "bytes 100-199/1000")]), 100).unwrap();
        assert_eq!(
            a,
            Answer {
                start: 100,
                total: Some(1000),
                end: BodyEnd::At(200)
            }
        );
        // Unknown total: the end of the range is all that is known.
        let a = interpret(206, &h(&[(CONTENT_RANGE, "bytes 100-199/*")]), 100).unwrap();
        assert_eq!(
            a,
            Answer {
                start: 100,
                total: None,
                end: BodyEnd::At(200)
            }
        );
        // Starting earlier than asked is fine (we skip); later, or ending before it, is not.
        assert_eq!(
            interpret(206, &h(&[(CONTENT_RANGE, "bytes 50-999/1000")]), 100)
                .unwrap()
                .start,
            50
        );
        assert!(interpret(206, &h(&[(CONTENT_RANGE, "bytes 150-999/1000")]), 100).is_err());
        assert!(interpret(206, &h(&[(CONTENT_RANGE, "bytes 0-50/1000")]), 100).is_err());
        assert!(interpret(206, &h(&[]), 100).is_err());
        assert!(interpret(206, &h(&[(CONTENT_RANGE, "bytes 0-1000/1000")]), 0).is_err());
        assert!(
            interpret(
                206,
                &h(&[(CONTENT_RANGE, "bytes 0-9/1000"), (CONTENT_LENGTH, "11")]),
                0
            )
            .is_err()
        );
        // 200: Range ignored; the length is the total; start at 0.
        let a = interpret(200, &h(&[(CONTENT_LENGTH, "1000")]), 100).unwrap();
        assert_eq!(
            a,
            Answer {
                start: 0,
                total: Some(1000),
                end: BodyEnd::Content
            }
        );
        let a = interpret(200, &h(&[]), 0).unwrap();
        assert_eq!(
            a,
            Answer {
                start: 0,
                total: None,
                end: BodyEnd::Content
            }
        );
        // 416: with the length, or only "nothing here".
        let a = interpret(416, &h(&[(CONTENT_RANGE, "bytes */1000")]), 1000).unwrap();
        assert_eq!(
            a,
            Answer {
                start: 1000,
                total: Some(1000),
                end: BodyEnd::Content
            }
        );
        let a = interpret(416, &h(&[]), 1000).unwrap();
        assert_eq!(
            a,
            Answer {
                start: 1000,
                total: None,
                end: BodyEnd::PastEnd
            }
        );
        assert!(interpret(416, &h(&[(CONTENT_RANGE, "bytes */2000")]), 1000).is_err());
    }

    #[test]
    fn media_type_normalized() {
        assert_eq!(
            media_type(&h(&[(CONTENT_TYPE, "Audio/MPEG; charset=x")])).as_deref(),
            Some("audio/mpeg")
        );
        assert_eq!(media_type(&h(&[])), None);
        assert_eq!(short_uri("https://m/x?access_token=abc"), "https://m/x");
    }
}
