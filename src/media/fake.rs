//! An in-memory [`MediaSource`] for tests: the media layer's own unit tests and the filesystem
//! core's tests use it instead of the HTTP client.
//!
//! Content is a deterministic function of (seed, offset) ([`byte_at`]), so recordings of any size
//! cost no memory and every byte a reader gets can be checked. Faults are injected per request:
//! open latency, slow or held bodies, bodies that end early (a dropped stream the body could not
//! resume), bodies that fail mid-way, failing opens, and responses without Content-Length. Every
//! request is logged with its offset, so tests can count requests exactly.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::{BoxFuture, MediaBody, MediaError, MediaSource, RecordingKey};
use crate::api::Priority;

/// The byte at `offset` of a fake recording made from `seed`.
pub fn byte_at(seed: u64, offset: u64) -> u8 {
    let x = (offset ^ seed.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((x >> 56) as u8) ^ (offset as u8)
}

/// The bytes `[offset, offset + len)` of a fake recording made from `seed`.
pub fn expected(seed: u64, offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len).map(|o| byte_at(seed, o)).collect()
}

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
        FakeRecording { len, seed, content_type: Some("audio/mpeg".into()), send_length: true }
    }
}

/// A fault applied to the next request (any recording), in the order they were pushed.
#[derive(Clone, Debug)]
pub enum Fault {
    /// The request fails before any body.
    OpenError(MediaError),
    /// The body fails with this error once it has delivered this many bytes.
    ErrorAfter(u64, MediaError),
    /// The body ends (EOF) once it has delivered this many bytes, whatever its length.
    EndAfter(u64),
}

#[derive(Default)]
struct Counters {
    bytes_sent: AtomicU64,
    live_bodies: AtomicUsize,
}

#[derive(Default)]
struct FakeState {
    recordings: HashMap<String, FakeRecording>,
    opens: Vec<(String, u64)>,
    faults: VecDeque<Fault>,
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
        }
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
        self.state.lock().unwrap().recordings.insert(id.to_string(), rec);
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
            let (rec, fault) = {
                let mut st = self.state.lock().unwrap();
                st.opens.push((id.clone(), offset));
                let rec = st.recordings.get(&id).cloned();
                (rec, st.faults.pop_front())
            };
            if !self.open_latency.is_zero() {
                tokio::time::sleep(self.open_latency).await;
            }
            if let Some(Fault::OpenError(e)) = fault {
                return Err(e);
            }
            let Some(rec) = rec else {
                return Err(MediaError::NotAvailable(format!("recording {id}: no such recording")));
            };
            let (fail_after, end_after) = match fault {
                Some(Fault::ErrorAfter(n, e)) => (Some((n, e)), None),
                Some(Fault::EndAfter(n)) => (None, Some(n)),
                _ => (None, None),
            };
            self.counters.live_bodies.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(FakeBody {
                pos: offset.min(rec.len),
                start: offset,
                rec,
                counters: self.counters.clone(),
                limit: self.limit.subscribe(),
                piece: self.piece,
                piece_delay: self.piece_delay,
                fail_after,
                end_after,
            }) as Box<dyn MediaBody>)
        })
    }
}

struct FakeBody {
    rec: FakeRecording,
    start: u64,
    pos: u64,
    counters: Arc<Counters>,
    limit: watch::Receiver<u64>,
    piece: usize,
    piece_delay: Duration,
    fail_after: Option<(u64, MediaError)>,
    end_after: Option<u64>,
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
        self.rec.send_length.then_some(self.rec.len)
    }

    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, MediaError>> {
        Box::pin(async move {
            let sent = self.pos.saturating_sub(self.start);
            if let Some((n, e)) = &self.fail_after {
                if sent >= *n {
                    return Err(e.clone());
                }
            }
            if self.end_after.is_some_and(|n| sent >= n) || self.pos >= self.rec.len {
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
            let mut end = (self.pos + self.piece as u64).min(self.rec.len).min(limit.max(self.pos + 1));
            if let Some((n, _)) = &self.fail_after {
                end = end.min(self.start + n).max(self.pos + 1);
            }
            if let Some(n) = self.end_after {
                end = end.min(self.start + n).max(self.pos + 1);
            }
            let data = expected(self.rec.seed, self.pos, end - self.pos);
            self.counters.bytes_sent.fetch_add(end - self.pos, Ordering::SeqCst);
            self.pos = end;
            Ok(Some(Bytes::from(data)))
        })
    }
}
