//! Streaming a recording's content: one GET, bytes handed on as they arrive, resumed on drops.
//!
//! A [`MediaStream`] is one streaming download of a `contentUri`, optionally from a start
//! offset (`Range: bytes=N-`). What the server tells is kept: `Content-Type` (MP3 or WAV is an
//! account setting only this header reveals) and the total length (`Content-Range` of a 206, or
//! `Content-Length` of a 200).
//!
//! When the connection drops or stalls, the next [`MediaStream::next_chunk`] reconnects with
//! `Range` from [`MediaStream::position`] (a new Heavy request through the pacer). The resumed
//! answer must belong to the same content: same total length and content type when both are
//! known, and a `Content-Range` that starts where we asked. A server that ignores `Range`
//! (200) is handled by skipping the bytes already delivered. A 416 whose `Content-Range`
//! (`bytes */N`) says the content is exactly `position` long means we were already at the end.
//! Without a known length, a clean end of body is the end of the content.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, HeaderMap};

use super::client::{Client, Req};
use super::pacer::RateGroup;
use super::{ApiError, Priority};

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// One streaming download (see the module docs).
pub struct MediaStream {
    client: Client,
    uri: String,
    prio: Priority,
    context: String,
    content_type: Option<String>,
    total_len: Option<u64>,
    etag: Option<String>,
    /// Offset of the next byte handed out.
    position: u64,
    /// The body in flight; `None` after a drop (the next call resumes).
    body: Option<Body>,
    /// Bytes at the start of `body` that were already delivered (server ignored `Range`).
    skip: u64,
    /// The content ended (known by a clean end without a length, or by a 416 at the end).
    eof: bool,
    /// Failures since the last byte received.
    failures: u32,
}

impl std::fmt::Debug for MediaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaStream")
            .field("uri", &self.uri)
            .field("content_type", &self.content_type)
            .field("total_len", &self.total_len)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

/// What a response said about the content.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    /// First byte of the body, as an offset in the content.
    start: u64,
    total: Option<u64>,
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

/// Interprets a 200/206 answer to a request for bytes from `asked`.
fn interpret(status: u16, headers: &HeaderMap, asked: u64) -> Result<Answer, String> {
    if status == 206 {
        let cr = header(headers, CONTENT_RANGE).ok_or("206 without Content-Range")?;
        let (range, total) = parse_content_range(cr).ok_or_else(|| format!("bad Content-Range {cr:?}"))?;
        let (a, b) = range.ok_or_else(|| format!("bad Content-Range {cr:?}"))?;
        if a > asked || b < a {
            return Err(format!("asked for bytes from {asked}, got Content-Range {cr:?}"));
        }
        if let Some(t) = total
            && b >= t
        {
            return Err(format!("Content-Range {cr:?} beyond its total"));
        }
        Ok(Answer { start: a, total })
    } else {
        // A full answer: Range was not asked for, or was ignored.
        let total = header(headers, CONTENT_LENGTH).and_then(|v| v.trim().parse().ok());
        Ok(Answer { start: 0, total })
    }
}

fn media_type(h: &HeaderMap) -> Option<String> {
    header(h, CONTENT_TYPE).map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase()).filter(|v| !v.is_empty())
}

impl MediaStream {
    pub(crate) async fn open(client: Client, uri: String, offset: u64, prio: Priority) -> Result<MediaStream, ApiError> {
        let context = format!("GET media {}", short_uri(&uri));
        let mut s = MediaStream {
            client,
            uri,
            prio,
            context,
            content_type: None,
            total_len: None,
            etag: None,
            position: offset,
            body: None,
            skip: 0,
            eof: false,
            failures: 0,
        };
        s.connect(true).await?;
        Ok(s)
    }

    /// `audio/mpeg`, `audio/wav`, `audio/x-wav` or whatever the server said (lowercase, no
    /// parameters).
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// The whole content's length, when the server told it.
    pub fn total_len(&self) -> Option<u64> {
        self.total_len
    }

    /// Offset of the next byte [`MediaStream::next_chunk`] returns.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next bytes, `None` at the end. Resumes dropped or stalled connections internally.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        loop {
            if self.eof || self.total_len.is_some_and(|t| self.position >= t) {
                self.body = None;
                return Ok(None);
            }
            if self.body.is_none() {
                if self.failures > self.client.config().max_retries {
                    return Err(ApiError::Timeout { context: self.context.clone(), what: "resuming the download" });
                }
                if self.failures > 1 {
                    tokio::time::sleep(self.client.backoff_for(self.failures - 2)).await;
                }
                self.client.count_resume();
                tracing::debug!(context = %self.context, position = self.position, "resuming download");
                self.connect(false).await?;
                continue;
            }
            let body = self.body.as_mut().expect("checked above");
            let chunk = self.client.next_body_chunk(body, &self.context).await;
            match chunk {
                Ok(Some(mut b)) => {
                    if self.skip > 0 {
                        let n = self.skip.min(b.len() as u64);
                        b = b.slice(n as usize..);
                        self.skip -= n;
                        if b.is_empty() {
                            continue;
                        }
                    }
                    if let Some(t) = self.total_len
                        && self.position + b.len() as u64 > t
                    {
                        self.body = None;
                        return Err(ApiError::ContentMismatch {
                            context: self.context.clone(),
                            detail: format!("more bytes than the announced {t}"),
                        });
                    }
                    self.position += b.len() as u64;
                    self.failures = 0;
                    return Ok(Some(b));
                }
                Ok(None) if self.total_len.is_none() => {
                    self.body = None;
                    self.eof = true;
                    return Ok(None);
                }
                Ok(None) => {
                    self.failures += 1;
                    self.body = None;
                    tracing::debug!(context = %self.context, position = self.position, "body ended early");
                }
                Err(e) => {
                    self.failures += 1;
                    self.body = None;
                    tracing::debug!(context = %self.context, position = self.position, "download interrupted: {e}");
                    if self.failures > self.client.config().max_retries {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Sends the GET (with `Range` from `position` when > 0) and installs the body.
    async fn connect(&mut self, first: bool) -> Result<(), ApiError> {
        let mut req = Req::get(self.uri.clone(), RateGroup::Heavy, self.context.clone());
        req.range_from = (self.position > 0).then_some(self.position);
        req.passthrough = &[416];
        let resp = self.client.execute(&req, self.prio).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        if status == 416 {
            let total = header(&headers, CONTENT_RANGE).and_then(parse_content_range).and_then(|(_, t)| t);
            if total == Some(self.position) && self.total_len.is_none_or(|t| t == self.position) {
                self.total_len = Some(self.position);
                self.content_type = self.content_type.take().or_else(|| media_type(&headers));
                self.eof = true;
                return Ok(());
            }
            let body = resp.bytes().await.unwrap_or_default();
            return Err(ApiError::from_body(416, &body, self.context.clone()));
        }
        let answer = interpret(status, &headers, self.position)
            .map_err(|detail| ApiError::ContentMismatch { context: self.context.clone(), detail })?;
        let ctype = media_type(&headers);
        let etag = header(&headers, ETAG).map(str::to_owned);
        if !first {
            let mismatch = match (self.total_len, answer.total) {
                (Some(a), Some(b)) if a != b => Some(format!("total length was {a}, now {b}")),
                _ => match (&self.content_type, &ctype) {
                    (Some(a), Some(b)) if a != b => Some(format!("content type was {a}, now {b}")),
                    _ => match (&self.etag, &etag) {
                        (Some(a), Some(b)) if a != b => Some("ETag changed".to_owned()),
                        _ => None,
                    },
                },
            };
            if let Some(detail) = mismatch {
                return Err(ApiError::ContentMismatch { context: self.context.clone(), detail });
            }
        }
        if let Some(t) = answer.total
            && self.position > t
        {
            return Err(ApiError::ContentMismatch {
                context: self.context.clone(),
                detail: format!("offset {} is beyond the content's {t} bytes", self.position),
            });
        }
        self.content_type = self.content_type.take().or(ctype);
        self.total_len = self.total_len.or(answer.total);
        self.etag = self.etag.take().or(etag);
        self.skip = self.position - answer.start;
        if self.skip > 0 {
            tracing::debug!(context = %self.context, skip = self.skip, "server ignored Range; skipping");
        }
        self.body = Some(Box::pin(resp.bytes_stream()));
        Ok(())
    }
}

/// The URI without its query (which could, with other servers, carry credentials).
fn short_uri(uri: &str) -> &str {
    uri.split('?').next().unwrap_or(uri)
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(parse_content_range("bytes 0-99/1000"), Some((Some((0, 99)), Some(1000))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((Some((5, 9)), None)));
        assert_eq!(parse_content_range("bytes */1000"), Some((None, Some(1000))));
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes x-1/2"), None);
    }

    #[test]
    fn interprets_answers() {
        let a = interpret(206, &h(&[(CONTENT_RANGE, "bytes 100-999/1000")]), 100).unwrap();
        assert_eq!(a, Answer { start: 100, total: Some(1000) });
        // Unknown total.
        let a = interpret(206, &h(&[(CONTENT_RANGE, "bytes 100-199/*")]), 100).unwrap();
        assert_eq!(a.total, None);
        // Starting earlier than asked is fine (we skip); later is not.
        assert_eq!(interpret(206, &h(&[(CONTENT_RANGE, "bytes 50-999/1000")]), 100).unwrap().start, 50);
        assert!(interpret(206, &h(&[(CONTENT_RANGE, "bytes 150-999/1000")]), 100).is_err());
        assert!(interpret(206, &h(&[]), 100).is_err());
        assert!(interpret(206, &h(&[(CONTENT_RANGE, "bytes 0-1000/1000")]), 0).is_err());
        // 200: Range ignored; the length is the total; start at 0.
        let a = interpret(200, &h(&[(CONTENT_LENGTH, "1000")]), 100).unwrap();
        assert_eq!(a, Answer { start: 0, total: Some(1000) });
        let a = interpret(200, &h(&[]), 0).unwrap();
        assert_eq!(a, Answer { start: 0, total: None });
    }

    #[test]
    fn media_type_normalized() {
        assert_eq!(media_type(&h(&[(CONTENT_TYPE, "Audio/MPEG; charset=x")])).as_deref(), Some("audio/mpeg"));
        assert_eq!(media_type(&h(&[])), None);
        assert_eq!(short_uri("https://m/x?access_token=abc"), "https://m/x");
    }
}
