//! An in-memory [`MediaSource`] for tests: the media layer's own unit tests and the filesystem
//! core's tests use it instead of the HTTP client.
//!
//! Content is a deterministic function of (seed, offset) ([`byte_at`]), so recordings of any size
//! cost no memory and every byte a reader gets can be checked. Faults are injected per request:
//! open latency, slow or held bodies, bodies that end early, bodies that fail mid-way, failing
//! opens, and, through [`FakeSource::with_replies`], any answer a media host may give to each
//! request (length stated or not, Range honoured, ignored or cut short, a bare 416, a drop at a
//! byte, 5xx, 404), which is what the model-based tests draw from. Every request is logged with
//! its offset, so tests can count requests exactly.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::{BodyEnd, BoxFuture, MediaBody, MediaError, MediaSource, RecordingKey};
use crate::api::{Priority, SKIPPED_HEAD, SKIPPED_TAIL, Skipped};

/// The byte at `offset` of a fake recording made from `seed`.
pub fn byte_at(seed: u64, offset: u64) -> u8 {
    let x = (offset ^ seed.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((x >> 56) as u8) ^ (offset as u8)
}

/// The bytes `[offset, offset + len)` of a fake recording made from `seed`.
pub fn expected(seed: u64, offset: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
    let mut o = offset;
    while o < offset + len {
        out.push(byte_at(seed, o));
        o += 1;
    }
    out
}

/// Recordings up to this size are generated once and served as slices (tests read the same
/// bytes many times); larger ones are generated piece by piece and cost no memory.
const MATERIALIZE_MAX: u64 = 16 << 20;

/// One recording the fake serves.
#[derive(Clone, Debug)]
pub struct FakeRecording {
    /// Total length in bytes.
    pub len: u64,
    /// Seed of the content function ([`byte_at`]).
    pub seed: u64,
    /// Content type the responses carry.
    pub content_type: Option<String>,
    /// Whether responses tell the total length (Content-Length / Content-Range).
    pub send_length: bool,
}

impl FakeRecording {
    /// An `audio/mpeg` recording of `len` bytes whose responses tell their length.
    pub fn new(len: u64, seed: u64) -> Self {
        FakeRecording {
            len,
            seed,
            content_type: Some("audio/mpeg".into()),
            send_length: true,
        }
    }
}

/// A fault applied to the next request (any recording), in the order they were pushed.
#[derive(Clone, Debug)]
pub enum Fault {
    /// The request fails before any body.
    OpenError(MediaError),
    /// The body fails with this error once it has delivered this many bytes.
    ErrorAfter(u64, MediaError),
    /// The body ends cleanly once it has delivered this many bytes, whatever its length (a
    /// server that closes early: an error when the length was stated, undetectable otherwise).
    EndAfter(u64),
}

/// How a response answers a request with a Range (`offset > 0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeRange {
    /// 206 from the offset to the end.
    Honour,
    /// 200 with the whole content from byte 0 (the source skips to the offset, as the HTTP
    /// adapter does: the bytes before it cost transfer, and a drop there brings nothing new).
    Ignore,
    /// 206 of at most this many bytes: the response ends before the content does.
    Capped(u64),
}

/// One answer of the media host, chosen per request by [`FakeSource::with_replies`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// 404: not (yet) there.
    NotFound,
    /// 5xx, 429 or a refused connection: a transient failure before any body.
    Unavailable,
    /// A body.
    Body {
        /// The response states the content's length (else it is learned at the clean end).
        length: bool,
        range: FakeRange,
        /// At or past the end: a bare 416 (no length told) instead of one with `bytes */N`.
        bare_416: bool,
        /// The connection drops when the body reaches this content offset.
        drop_at: Option<u64>,
        /// Without a length: the body is delimited by its connection (not chunked), so a drop
        /// looks like a clean end.
        close_delimited: bool,
    },
}

impl Reply {
    /// The plain answer: length stated, Range honoured, no drop.
    pub fn plain() -> Reply {
        Reply::Body {
            length: true,
            range: FakeRange::Honour,
            bare_416: false,
            drop_at: None,
            close_delimited: false,
        }
    }
}

/// Chooses the answer to request number `n` (0-based, per recording) for `(id, offset)`.
pub type Replies = Arc<dyn Fn(&str, u64, usize) -> Reply + Send + Sync>;

#[derive(Default)]
struct Counters {
    bytes_sent: AtomicU64,
    live_bodies: AtomicUsize,
}

#[derive(Default)]
struct FakeState {
    /// Each recording, with its content when small enough to keep (see [`MATERIALIZE_MAX`]).
    recordings: HashMap<String, (FakeRecording, Option<Bytes>)>,
    opens: Vec<(String, u64)>,
    faults: VecDeque<Fault>,
    /// Requests so far per recording.
    requests: HashMap<String, usize>,
}

/// The fake source. See the module docs.
pub struct FakeSource {
    state: Mutex<FakeState>,
    counters: Arc<Counters>,
    /// Bodies deliver no byte at or past this offset until it is raised (`u64::MAX`: no hold).
    limit: watch::Sender<u64>,
    open_latency: Duration,
    piece: usize,
    piece_delay: Duration,
    replies: Option<Replies>,
}

impl Default for FakeSource {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeSource {
    /// No latency, 4 KiB pieces, no delay between pieces.
    pub fn new() -> Self {
        FakeSource {
            state: Mutex::default(),
            counters: Arc::default(),
            limit: watch::Sender::new(u64::MAX),
            open_latency: Duration::ZERO,
            piece: 4096,
            piece_delay: Duration::ZERO,
            replies: None,
        }
    }

    /// Answers every request as `replies` chooses (pushed faults still come first).
    pub fn with_replies(mut self, replies: Replies) -> Self {
        self.replies = Some(replies);
        self
    }

    /// Each request waits this long before its response headers.
    pub fn with_open_latency(mut self, latency: Duration) -> Self {
        self.open_latency = latency;
        self
    }

    /// Bodies deliver pieces of at most this many bytes.
    pub fn with_piece(mut self, piece: usize) -> Self {
        self.piece = piece.max(1);
        self
    }

    /// Bodies wait this long before each piece.
    pub fn with_piece_delay(mut self, delay: Duration) -> Self {
        self.piece_delay = delay;
        self
    }

    /// Serves `rec` under `id`.
    pub fn add(&self, id: &str, rec: FakeRecording) {
        let content =
            (rec.len <= MATERIALIZE_MAX).then(|| Bytes::from(expected(rec.seed, 0, rec.len)));
        self.state
            .lock()
            .unwrap()
            .recordings
            .insert(id.to_string(), (rec, content));
    }

    /// Serves `content` under `id` (a recording whose bytes matter, a WAV header say), with
    /// `content_type`; its responses tell no length unless `send_length`.
    pub fn add_bytes(&self, id: &str, content: Bytes, content_type: &str, send_length: bool) {
        let rec = FakeRecording {
            len: content.len() as u64,
            seed: 0,
            content_type: Some(content_type.into()),
            send_length,
        };
        self.state
            .lock()
            .unwrap()
            .recordings
            .insert(id.to_string(), (rec, Some(content)));
    }

    /// Applies `fault` to a future request (the first request without a fault yet).
    pub fn push_fault(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push_back(fault);
    }

    /// Holds every body at `limit` (it delivers no byte at or past that offset); `None` releases.
    pub fn set_limit(&self, limit: Option<u64>) {
        self.limit.send_replace(limit.unwrap_or(u64::MAX));
    }

    /// Every request so far: (recording id, offset).
    pub fn opens(&self) -> Vec<(String, u64)> {
        self.state.lock().unwrap().opens.clone()
    }

    /// Body bytes delivered so far, all requests together.
    pub fn bytes_sent(&self) -> u64 {
        self.counters.bytes_sent.load(Ordering::SeqCst)
    }

    /// Bodies (connections) not yet dropped.
    pub fn live_bodies(&self) -> usize {
        self.counters.live_bodies.load(Ordering::SeqCst)
    }
}

impl MediaSource for FakeSource {
    fn open(
        &self,
        key: &RecordingKey,
        offset: u64,
        _prio: Priority,
    ) -> BoxFuture<'_, Result<Box<dyn MediaBody>, MediaError>> {
        let id = key.id.clone();
        Box::pin(async move {
            let (rec, fault, n) = {
                let mut st = self.state.lock().unwrap();
                st.opens.push((id.clone(), offset));
                let n = st.requests.entry(id.clone()).or_default();
                let this = *n;
                *n += 1;
                let rec = st.recordings.get(&id).cloned();
                (rec, st.faults.pop_front(), this)
            };
            if !self.open_latency.is_zero() {
                tokio::time::sleep(self.open_latency).await;
            }
            if let Some(Fault::OpenError(e)) = fault {
                return Err(e);
            }
            let Some((rec, content)) = rec else {
                return Err(MediaError::NotAvailable(format!(
                    "recording {id}: no such recording"
                )));
            };
            let reply = match &self.replies {
                Some(f) if fault.is_none() => f(&id, offset, n),
                _ => Reply::Body {
                    length: rec.send_length,
                    range: FakeRange::Honour,
                    bare_416: false,
                    drop_at: None,
                    close_delimited: false,
                },
            };
            let (length, range, bare_416, drop_at, close_delimited) = match reply {
                Reply::NotFound => {
                    return Err(MediaError::NotAvailable(format!("recording {id}: 404")));
                }
                Reply::Unavailable => {
                    return Err(MediaError::Transient(format!("recording {id}: 503")));
                }
                Reply::Body {
                    length,
                    range,
                    bare_416,
                    drop_at,
                    close_delimited,
                } => (length, range, bare_416, drop_at, close_delimited),
            };
            let close_delimited = close_delimited && !length;
            let (fail_after, end_after) = match fault {
                Some(Fault::ErrorAfter(n, e)) => (Some((offset + n, e)), None),
                Some(Fault::EndAfter(n)) => (None, Some(offset + n)),
                _ => (None, None),
            };
            // What the headers say, as the HTTP adapter reports it.
            let ranged = offset > 0;
            let past_end = offset >= rec.len && ranged && range != FakeRange::Ignore;
            let (body_start, stop, total, end) = if past_end {
                if bare_416 {
                    (offset, offset, None, BodyEnd::PastEnd)
                } else {
                    (offset, offset, Some(rec.len), BodyEnd::Content)
                }
            } else {
                match range {
                    FakeRange::Capped(cap) if ranged => {
                        let stop = (offset + cap.max(1)).min(rec.len);
                        let end = if stop == rec.len && length {
                            BodyEnd::Content
                        } else {
                            BodyEnd::At(stop)
                        };
                        (offset, stop, length.then_some(rec.len), end)
                    }
                    FakeRange::Ignore if ranged => {
                        (0, rec.len, length.then_some(rec.len), BodyEnd::Content)
                    }
                    // A 206 says where its range ends (`bytes a-b/*` when the total is untold).
                    FakeRange::Honour if ranged && !length => {
                        (offset, rec.len, None, BodyEnd::At(rec.len))
                    }
                    _ => (offset, rec.len, length.then_some(rec.len), BodyEnd::Content),
                }
            };
            // Only a body whose end nothing announces is delimited by its connection.
            let close_delimited = close_delimited && end == BodyEnd::Content && !past_end;
            let end = if close_delimited {
                BodyEnd::Unconfirmed
            } else {
                end
            };
            // A drop is an error, but where the connection delimits the body it is an end.
            let (fail_after, end_after) = match drop_at {
                Some(at) if close_delimited => (fail_after, end_after.or(Some(at))),
                Some(at) => (
                    fail_after.or(Some((
                        at,
                        MediaError::Transient(format!("recording {id}: dropped at {at}")),
                    ))),
                    end_after,
                ),
                None => (fail_after, end_after),
            };
            self.counters.live_bodies.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(FakeBody {
                pos: body_start,
                from: offset,
                stop,
                total,
                end,
                rec,
                content,
                counters: self.counters.clone(),
                limit: self.limit.subscribe(),
                piece: self.piece,
                piece_delay: self.piece_delay,
                fail_after,
                end_after,
                ended: false,
                skipped: Skipped::default(),
            }) as Box<dyn MediaBody>)
        })
    }
}

struct FakeBody {
    rec: FakeRecording,
    content: Option<Bytes>,
    /// Content offset of the next byte the body sends (bytes before `from` are skipped).
    pos: u64,
    /// The offset asked for.
    from: u64,
    /// Where this body ends cleanly.
    stop: u64,
    total: Option<u64>,
    end: BodyEnd,
    counters: Arc<Counters>,
    limit: watch::Receiver<u64>,
    piece: usize,
    piece_delay: Duration,
    /// Content offset at which the body fails, and with what.
    fail_after: Option<(u64, MediaError)>,
    /// Content offset at which the body ends cleanly, early.
    end_after: Option<u64>,
    /// The body ended cleanly.
    ended: bool,
    /// What it skipped before `from`, kept as the HTTP adapter keeps it.
    skipped: Skipped,
}

impl FakeBody {
    fn bytes(&self, from: u64, to: u64) -> Bytes {
        match &self.content {
            Some(c) => c.slice(from as usize..to as usize),
            None => Bytes::from(expected(self.rec.seed, from, to - from)),
        }
    }
}

impl Drop for FakeBody {
    fn drop(&mut self) {
        self.counters.live_bodies.fetch_sub(1, Ordering::SeqCst);
    }
}

impl MediaBody for FakeBody {
    fn content_type(&self) -> Option<&str> {
        self.rec.content_type.as_deref()
    }

    fn total_len(&self) -> Option<u64> {
        self.total
    }

    fn end(&self) -> BodyEnd {
        self.end
    }

    fn validator(&self) -> Option<&str> {
        None
    }

    fn ended_at(&self) -> Option<u64> {
        (self.ended && self.pos < self.from).then_some(self.pos)
    }

    fn skipped(&self) -> Skipped {
        self.skipped.clone()
    }

    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, MediaError>> {
        Box::pin(async move {
            loop {
                if let Some((at, e)) = &self.fail_after
                    && self.pos >= *at
                {
                    return Err(e.clone());
                }
                if self.end_after.is_some_and(|n| self.pos >= n) || self.pos >= self.stop {
                    if self.end == BodyEnd::Content && self.total.is_none() {
                        // Learned at the clean end, as the HTTP adapter does.
                        self.total = Some(self.pos);
                    }
                    self.ended = true;
                    return Ok(None);
                }
                loop {
                    let limit = *self.limit.borrow_and_update();
                    if limit > self.pos {
                        break;
                    }
                    if self.limit.changed().await.is_err() {
                        return Err(MediaError::Failed("fake source dropped".into()));
                    }
                }
                if !self.piece_delay.is_zero() {
                    tokio::time::sleep(self.piece_delay).await;
                }
                let limit = *self.limit.borrow();
                let mut end = (self.pos + self.piece as u64)
                    .min(self.stop)
                    .min(limit.max(self.pos + 1));
                if let Some((n, _)) = &self.fail_after {
                    end = end.min(*n).max(self.pos + 1);
                }
                if let Some(n) = self.end_after {
                    end = end.min(n).max(self.pos + 1);
                }
                let start = self.pos;
                self.pos = end;
                self.counters
                    .bytes_sent
                    .fetch_add(end - start, Ordering::SeqCst);
                if start < self.from {
                    // Skipped: before the offset asked for. Only the bytes `Skipped` keeps
                    // are made (its head, and the last of the piece).
                    let to = end.min(self.from);
                    let head = to.min(SKIPPED_HEAD as u64);
                    if start < head {
                        let b = self.bytes(start, head);
                        self.skipped.keep_head(start, &b);
                    }
                    let b = self.bytes(start.max(to.saturating_sub(SKIPPED_TAIL as u64)), to);
                    self.skipped.keep_tail(&b);
                }
                if end <= self.from {
                    continue;
                }
                let from = start.max(self.from);
                return Ok(Some(self.bytes(from, end)));
            }
        })
    }
}
