//! Recording media: lazy opening, one shared streaming download per recording, and a
//! byte-budgeted LRU chunk cache.
//!
//! Players read a recording sequentially with occasional seeks, several programs may read the same
//! file at once, and media requests are the scarcest part of the API budget. So each recording costs
//! one streaming request, every reader of it is served from that stream as bytes arrive, bytes stay
//! in memory (within a global budget) for re-reads, and memory stays bounded however many files are
//! open. The layer knows nothing of FUSE or HTTP: it reads from a [`MediaSource`] (the lead's adapter
//! over the API client in production, [`fake::FakeSource`] in tests) and answers byte ranges.
//!
//! # Algorithm
//!
//! **Chunks.** Content is cut into fixed chunks of `chunk_size` bytes; chunk `i` is
//! `[i*cs, (i+1)*cs)`. Bytes live in exactly two places:
//! 1. the LRU cache, `(recording id, i) -> Bytes`, holding a *prefix* of chunk `i`. An entry is
//!    complete when it holds `cs` bytes or reaches the known size; a shorter one is a *partial
//!    entry*, left behind by a download that stopped mid-chunk;
//! 2. the buffer of a running download: the chunk it is filling, `[buf_start, pos)` with
//!    `buf_start` chunk-aligned. When the chunk is full it moves (no copy) into the LRU.
//!
//! The byte total (LRU entries + download buffers) is kept beside the LRU; after every change the
//! least recent entries are evicted until the total is within `cache_bytes`.
//!
//! **Downloads.** A download is one [`MediaSource::open`] at `start` plus a task pulling the body.
//! It starts at a chunk boundary, or right after a partial entry, which it takes back from the LRU
//! into its buffer: the Range request starts exactly where an earlier stream stopped, and no byte
//! is fetched twice. A recording has a list of downloads (normally one; see [`MAX_DOWNLOADS`]).
//!
//! **A read of `[X, X+n)`** loops, under `read_timeout` (then [`MediaError::TimedOut`]):
//! 1. clamp the range to the known size (exact, or an upper bound learned from a Range past EOF);
//! 2. copy what is present, from LRU entries and download buffers. The first read of an entry
//!    does not refresh it, a second one does: a chunk read once by a sequential reader is the
//!    least likely to be wanted again, while chunks streamed ahead of slower readers are not read
//!    yet. Refreshing on first read evicted those (32 readers under a small budget fetched a
//!    third of their bytes twice). Eviction also takes read entries before unread ones, so
//!    what was streamed ahead for a reader stays until it is read (see `Inner::evict`), and a
//!    recording played twice is refreshed and kept;
//! 3. if the range is complete, return it (the first pass completing is a cache hit);
//! 4. else, if the download it waited on failed, return that error: the read is over, and the
//!    *next* read starts afresh (so an error is never retried in a loop);
//! 5. else, if a download will reach `X` soon (`pos <= X <= pos + far_seek`), register with it as
//!    a reader (`reader_pos = max(reader_pos, X+n)`, `last_read = now`) and sleep until it signals
//!    progress. The task signals after every piece of body, so a reader wakes as soon as `X`
//!    arrives, not when the chunk or the file is done;
//! 6. else (a far seek, a backward seek to evicted bytes, a stream that stopped) start one download
//!    at `X` and wait on it. A read starts at most [`MAX_STARTS`] downloads without copying a byte
//!    (only a cache budget smaller than the working set can make it need more than one).
//!
//! Reads that are served from memory also register with the download whose range covers them
//! (`start <= X <= pos + far_seek`), so the download knows how far its readers are.
//!
//! **A download task**: open, learn size and content type from the headers, wake the waiters; then
//! loop:
//! - *backpressure*: when `pos >= reader_pos + readahead` it stops polling the body (the transport's
//!   flow control pushes back to the server). While paused it stops for good if every reader closed
//!   the file, or if no read came for `idle_timeout` (dropping the body drops the connection); else
//!   it sleeps until a reader moves on or the idle deadline;
//! - pull a piece, append it, move full chunks to the LRU, evict, wake readers;
//! - it ends at EOF (the size is then exact even without Content-Length), on a body error (its
//!   waiters get the error), when the next chunk is already cached or covered by another download of
//!   the same recording (two streams never fetch the same bytes twice), or when stopped (idle,
//!   closed, replaced). On every end its buffer goes to the LRU as a partial entry, so a later read
//!   resumes with one Range request.
//!
//! Hence: a complete sequential read spends exactly one request; a re-read within the budget spends
//! none; a near seek is served by the stream, a far one spends one Range request.
//!
//! **Memory**: the byte total counts the LRU *and* the download buffers, and eviction keeps it
//! within `cache_bytes`, so memory is at most `max(cache_bytes, buffers)`. Buffers are less than
//! one chunk per live download, and a download lives only while it is read: it pauses `readahead`
//! ahead of its readers and closes after `idle_timeout` without reads (or at once when the file is
//! closed), so open but idle files hold nothing but evictable cache entries. With the defaults
//! (256 MiB, 256 KiB chunks) the budget is exceeded only past 1024 downloads read at once.
//!
//! # Lock discipline
//! One `std::sync::Mutex<Inner>` guards all state: the LRU, the byte totals, per-recording state,
//! the downloads and the stats. It is held only for bookkeeping and for copying at most one read's
//! bytes; never across an `.await`, never while calling the source or a body. The only other
//! synchronisation is `tokio::sync::Notify` (one "data" and one "reader moved" per recording), which
//! may be signalled under the lock: it takes only its own internal lock and never calls back. A
//! waiter always calls `Notified::enable()` *before* checking the state under the lock, so a signal
//! between check and sleep is not lost. Anyone may end a download (cleanup under the lock, then
//! abort its task), so a task re-checks that its download still exists every time it takes the lock.

pub mod fake;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use lru::LruCache;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

pub use crate::api::Priority;

/// A boxed, sendable future (the traits are object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Downloads one recording keeps (two readers at different places, a probe of the end of the file,
/// a seek); starting one more stops the least recently read paused one. More exist only while more
/// readers than this wait at different places at once (one each).
pub const MAX_DOWNLOADS: usize = 4;

/// Most downloads a single read starts without receiving a byte (see the algorithm, step 6).
pub const MAX_STARTS: u32 = 3;

/// Failures remembered per recording so that the readers that waited on a download get its error.
const MAX_FAILURES_KEPT: usize = 16;

/// Which recording. The cache is keyed by `id` only: the URI (with its tokens) may change between
/// listings, the recording never does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecordingKey {
    /// Recording id.
    pub id: String,
    /// Where the media is fetched from (passed to the source; the latest one seen is used).
    pub content_uri: String,
}

/// Why media could not be read.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MediaError {
    /// The service said the recording is not (yet) fetchable (404).
    #[error("recording not available: {0}")]
    NotAvailable(String),
    /// Any other failure (service error, transport, truncated body).
    #[error("media request failed: {0}")]
    Failed(String),
    /// A read or open waited longer than `read_timeout`.
    #[error("media read timed out")]
    TimedOut,
}

/// The response body of one media request.
pub trait MediaBody: Send {
    /// Content type of the response, if it said one.
    fn content_type(&self) -> Option<&str>;
    /// Total length of the whole recording (not of the range): Content-Length of a 200, the total
    /// of the Content-Range of a 206 or 416. `None` when the response did not tell.
    fn total_len(&self) -> Option<u64>;
    /// The next bytes, in order, starting at the offset given to [`MediaSource::open`]; `Ok(None)`
    /// at the end. The body resumes dropped connections itself; an error is final for this body.
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, MediaError>>;
}

/// Where media comes from. One call = one request.
pub trait MediaSource: Send + Sync + 'static {
    /// Requests the recording from `offset` (`offset > 0`: a Range request) and returns once the
    /// response headers are in. At or past the end it must return a body that ends at once (an
    /// HTTP adapter maps 416 to that), telling the total length if the response did.
    fn open(
        &self,
        key: &RecordingKey,
        offset: u64,
        prio: Priority,
    ) -> BoxFuture<'_, Result<Box<dyn MediaBody>, MediaError>>;
}

/// Tuning of the media layer.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// Byte budget of the chunk cache, all recordings together.
    pub cache_bytes: u64,
    /// Cache granularity, bytes.
    pub chunk_size: usize,
    /// How far a download may run ahead of its furthest reader before it pauses.
    pub readahead: u64,
    /// A read at most this far past a download's position waits for it; further starts a new one.
    pub far_seek: u64,
    /// A read or open never blocks longer than this.
    pub read_timeout: Duration,
    /// A paused download with no read for this long drops its connection.
    pub idle_timeout: Duration,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            cache_bytes: 256 << 20,
            chunk_size: 256 << 10,
            readahead: 2 << 20,
            far_seek: 1 << 20,
            read_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// What is known of a recording from the responses so far.
#[derive(Clone, Debug, PartialEq)]
pub struct Known {
    /// Exact size when `complete`; otherwise the most bytes seen so far (a lower bound), if any.
    pub size: Option<u64>,
    /// Content type the media host answered.
    pub content_type: Option<String>,
    /// `size` is exact.
    pub complete: bool,
}

/// Counters of the media layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MediaStats {
    /// Requests issued to the source.
    pub opens: u64,
    /// Reads answered entirely from memory at once.
    pub cache_hits: u64,
    /// Reads that had to wait for a download.
    pub cache_misses: u64,
    /// Bytes held now (LRU entries + download buffers).
    pub bytes_cached: u64,
    /// Most bytes ever held (measured after eviction).
    pub peak_bytes: u64,
    /// LRU entries evicted to stay within the budget.
    pub evictions: u64,
}

/// The media layer. See the module docs.
pub struct Media {
    shared: Arc<Shared>,
}

struct Shared {
    source: Arc<dyn MediaSource>,
    config: MediaConfig,
    inner: Mutex<Inner>,
}

type ChunkKey = (Arc<str>, u64);

/// An LRU entry: a chunk prefix, and whether a reader has read from it (see step 2 above).
struct Entry {
    data: Bytes,
    read: bool,
}

struct Inner {
    /// Chunk prefixes; see the module docs. Unbounded by count: bounded by `cached_bytes`.
    cache: LruCache<ChunkKey, Entry>,
    /// Sum of the lengths of the LRU entries.
    cached_bytes: u64,
    /// Sum of the lengths of the download buffers.
    buffered_bytes: u64,
    /// Per recording, never removed (small: what is known and the live downloads).
    recs: HashMap<Arc<str>, Rec>,
    next_download: u64,
    stats: MediaStats,
}

struct Rec {
    id: Arc<str>,
    /// Latest key seen (its URI is used for new requests).
    key: RecordingKey,
    known: Option<Known>,
    /// No byte at or past this offset exists (a Range past the end ended at once, length unknown).
    size_upper: Option<u64>,
    /// Open handles (open minus close).
    readers: u32,
    /// The last reader closed: paused downloads stop at once instead of after `idle_timeout`.
    closed: bool,
    downloads: Vec<Download>,
    /// Recent download failures, so waiters of a failed download get its error.
    failures: VecDeque<(u64, MediaError)>,
    /// Signalled by downloads: new bytes, headers, end, failure.
    data: Arc<Notify>,
    /// Signalled by readers: a download's `reader_pos`/`last_read` moved, or the file was closed.
    moved: Arc<Notify>,
}

struct Download {
    id: u64,
    /// Offset of the request.
    start: u64,
    /// Next offset the body delivers.
    pos: u64,
    /// Chunk-aligned offset of `buf[0]`; `buf` holds `[buf_start, pos)`, less than one chunk.
    buf_start: u64,
    buf: BytesMut,
    /// Response headers are in.
    headers: bool,
    /// Furthest end of a read served or awaited from this download.
    reader_pos: u64,
    last_read: Instant,
    abort: Option<AbortHandle>,
}

/// Why a download ends.
#[derive(Debug)]
enum End {
    Eof,
    Failed(MediaError),
    /// Its next bytes are cached or another download covers them.
    Merged,
    Idle,
    Closed,
    Replaced,
}

enum Step<T> {
    Done(T),
    Wait,
    Fail(MediaError),
}

impl Rec {
    fn new(key: &RecordingKey) -> Self {
        Rec {
            id: Arc::from(key.id.as_str()),
            key: key.clone(),
            known: None,
            size_upper: None,
            readers: 0,
            closed: false,
            downloads: Vec::new(),
            failures: VecDeque::new(),
            data: Arc::new(Notify::new()),
            moved: Arc::new(Notify::new()),
        }
    }

    fn exact_size(&self) -> Option<u64> {
        self.known.as_ref().filter(|k| k.complete).and_then(|k| k.size)
    }

    /// No byte at or past this offset exists.
    fn end_bound(&self) -> Option<u64> {
        match (self.exact_size(), self.size_upper) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn failure_of(&self, download: u64) -> Option<MediaError> {
        self.failures.iter().find(|(id, _)| *id == download).map(|(_, e)| e.clone())
    }

    fn learn(&mut self, total: Option<u64>, content_type: Option<&str>) {
        let prev = self.known.take();
        let mut k = prev.unwrap_or(Known { size: None, content_type: None, complete: false });
        if let Some(total) = total {
            if k.complete && k.size != Some(total) {
                tracing::warn!(recording = %self.id, old = ?k.size, new = total, "recording size changed");
            }
            k.size = Some(total);
            k.complete = true;
        }
        if let Some(ct) = content_type {
            k.content_type = Some(ct.to_string());
        }
        self.known = Some(k);
    }

    /// Raises the lower bound of an unknown size.
    fn saw(&mut self, pos: u64) {
        if let Some(k) = self.known.as_mut() {
            if !k.complete && k.size.is_none_or(|s| s < pos) {
                k.size = Some(pos);
            }
        }
    }
}

fn chunk_complete(len: usize, idx: u64, cs: usize, size: Option<u64>) -> bool {
    len >= cs || size.is_some_and(|s| idx * cs as u64 + len as u64 >= s)
}

impl Inner {
    fn rec(&mut self, key: &RecordingKey) -> &mut Rec {
        if !self.recs.contains_key(key.id.as_str()) {
            let rec = Rec::new(key);
            self.recs.insert(rec.id.clone(), rec);
        }
        let rec = self.recs.get_mut(key.id.as_str()).expect("inserted above");
        if rec.key.content_uri != key.content_uri {
            rec.key = key.clone();
        }
        rec
    }

    fn total(&self) -> u64 {
        self.cached_bytes + self.buffered_bytes
    }

    /// Evicts least recent entries until within `budget`.
    fn evict(&mut self, budget: u64) {
        while self.total() > budget {
            // Entries already read go first, least recent first; entries streamed ahead of a
            // reader that has not reached them yet go only when nothing read is left. The scan
            // from the LRU end stops at the first read entry, and unread entries are few (the
            // read-ahead windows), so it is short.
            let victim = self.cache.iter().rev().find(|(_, e)| e.read).map(|(k, _)| k.clone());
            let popped = match victim {
                Some(k) => self.cache.pop_entry(&k),
                None => self.cache.pop_lru(),
            };
            let Some((key, v)) = popped else { break };
            tracing::trace!(recording = %key.0, chunk = key.1, "evicted");
            self.cached_bytes -= v.data.len() as u64;
            self.stats.evictions += 1;
        }
        self.stats.peak_bytes = self.stats.peak_bytes.max(self.total());
    }

    /// Inserts a chunk prefix unless a longer prefix of the same chunk is already there.
    fn insert(&mut self, key: ChunkKey, data: Bytes) {
        if data.is_empty() || self.cache.peek(&key).is_some_and(|old| old.data.len() >= data.len()) {
            return;
        }
        let len = data.len() as u64;
        if let Some(old) = self.cache.put(key, Entry { data, read: false }) {
            self.cached_bytes -= old.data.len() as u64;
        }
        self.cached_bytes += len;
    }

    /// Copies the bytes of `[*pos, end)` that are present into `out`, advancing `*pos`.
    fn copy_present(&mut self, id: &Arc<str>, pos: &mut u64, end: u64, cs: usize, out: &mut BytesMut) {
        let cs64 = cs as u64;
        while *pos < end {
            let idx = *pos / cs64;
            let within = (*pos - idx * cs64) as usize;
            let want = (end - *pos).min(cs64 - within as u64) as usize;
            let key = (id.clone(), idx);
            let read_before = self.cache.peek_mut(&key).map(|e| std::mem::replace(&mut e.read, true));
            if read_before == Some(true) {
                self.cache.promote(&key);
            }
            if let Some(entry) = self.cache.peek(&key).map(|e| &e.data) {
                if within < entry.len() {
                    let n = want.min(entry.len() - within);
                    out.extend_from_slice(&entry[within..within + n]);
                    *pos += n as u64;
                    continue;
                }
            }
            let rec = &self.recs[id];
            let Some(d) = rec.downloads.iter().find(|d| d.buf_start <= *pos && *pos < d.pos) else {
                break;
            };
            let from = (*pos - d.buf_start) as usize;
            let n = want.min(d.buf.len() - from);
            out.extend_from_slice(&d.buf[from..from + n]);
            *pos += n as u64;
        }
    }

    /// Ends a download: its buffer goes to the LRU as a (partial) entry, its task is aborted, its
    /// waiters are woken (and get `Failed`'s error).
    fn end_download(&mut self, id: &Arc<str>, download: u64, why: End, cs: usize, budget: u64) {
        let Some(rec) = self.recs.get_mut(id) else { return };
        let Some(i) = rec.downloads.iter().position(|d| d.id == download) else { return };
        let d = rec.downloads.swap_remove(i);
        tracing::debug!(recording = %id, download, start = d.start, pos = d.pos, why = ?why, "download ended");
        if let End::Failed(e) = why {
            rec.failures.push_back((download, e));
            if rec.failures.len() > MAX_FAILURES_KEPT {
                rec.failures.pop_front();
            }
        }
        if let Some(abort) = &d.abort {
            abort.abort();
        }
        rec.data.notify_waiters();
        self.buffered_bytes -= d.buf.len() as u64;
        if !d.buf.is_empty() {
            // Copy: the buffer's allocation is a whole chunk, the entry may be much shorter.
            let data = Bytes::copy_from_slice(&d.buf);
            self.insert((id.clone(), d.buf_start / cs as u64), data);
        }
        self.evict(budget);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves bookkeeping that is still memory safe; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cs(&self) -> usize {
        self.config.chunk_size
    }

    /// Starts a download of `id` that delivers `at` (see the module docs: chunk-aligned, or right
    /// after a partial entry it takes over). Returns its id.
    fn start_download(
        self: &Arc<Self>,
        g: &mut Inner,
        id: &Arc<str>,
        at: u64,
        reader_end: u64,
        prio: Priority,
    ) -> u64 {
        let cs = self.cs();
        let cs64 = cs as u64;
        let idx = at / cs64;
        let ckey = (id.clone(), idx);
        let mut buf = BytesMut::with_capacity(cs);
        if let Some(entry) = g.cache.peek(&ckey) {
            if idx * cs64 + entry.data.len() as u64 <= at {
                let entry = g.cache.pop(&ckey).expect("peeked").data;
                g.cached_bytes -= entry.len() as u64;
                g.buffered_bytes += entry.len() as u64;
                buf.extend_from_slice(&entry);
            }
        }
        let start = idx * cs64 + buf.len() as u64;
        // Make room: stop the least recently read *paused* download. One that a reader waits on is
        // never paused (its reader_pos is past its pos), so no waiting reader loses its stream.
        let rec = g.recs.get_mut(id).expect("caller made the rec");
        if rec.downloads.len() >= MAX_DOWNLOADS {
            let readahead = self.config.readahead;
            let victim = rec
                .downloads
                .iter()
                .filter(|d| d.headers && d.pos >= d.reader_pos.saturating_add(readahead))
                .min_by_key(|d| d.last_read)
                .map(|d| d.id);
            if let Some(victim) = victim {
                g.end_download(id, victim, End::Replaced, cs, self.config.cache_bytes);
            }
        }
        g.next_download += 1;
        g.stats.opens += 1;
        let download = g.next_download;
        let rec = g.recs.get_mut(id).expect("caller made the rec");
        tracing::debug!(recording = %id, download, start, "download starts");
        let task = tokio::spawn(download_task(
            self.clone(),
            rec.key.clone(),
            id.clone(),
            download,
            start,
            prio,
            rec.data.clone(),
            rec.moved.clone(),
        ));
        rec.downloads.push(Download {
            id: download,
            start,
            pos: start,
            buf_start: idx * cs64,
            buf,
            headers: false,
            reader_pos: reader_end.max(start),
            last_read: Instant::now(),
            abort: Some(task.abort_handle()),
        });
        download
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        let g = self.shared.lock();
        for rec in g.recs.values() {
            for d in &rec.downloads {
                if let Some(a) = &d.abort {
                    a.abort();
                }
            }
        }
    }
}

impl Media {
    /// A media layer reading from `source`. Downloads are tokio tasks: call `open`/`read` inside a
    /// tokio runtime.
    pub fn new(source: Arc<dyn MediaSource>, mut config: MediaConfig) -> Arc<Media> {
        config.chunk_size = config.chunk_size.max(1);
        Arc::new(Media {
            shared: Arc::new(Shared {
                source,
                config,
                inner: Mutex::new(Inner {
                    cache: LruCache::unbounded(),
                    cached_bytes: 0,
                    buffered_bytes: 0,
                    recs: HashMap::new(),
                    next_download: 0,
                    stats: MediaStats::default(),
                }),
            }),
        })
    }

    /// Makes sure bytes can flow and counts one reader. Spends nothing when the whole recording is
    /// cached; otherwise starts (or joins) a download and waits for its response headers, so size
    /// and content type are known on return.
    pub async fn open(&self, key: &RecordingKey, prio: Priority) -> Result<Known, MediaError> {
        let known = tokio::time::timeout(self.shared.config.read_timeout, self.open_inner(key, prio))
            .await
            .map_err(|_| MediaError::TimedOut)??;
        let mut g = self.shared.lock();
        let rec = g.rec(key);
        rec.readers += 1;
        rec.closed = false;
        Ok(known)
    }

    async fn open_inner(&self, key: &RecordingKey, prio: Priority) -> Result<Known, MediaError> {
        let sh = &self.shared;
        let cs = sh.cs() as u64;
        let data = sh.lock().rec(key).data.clone();
        let mut waited: Option<u64> = None;
        let mut starts = 0;
        loop {
            let notified = data.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let step = {
                let mut g = sh.lock();
                let g = &mut *g;
                let rec = g.rec(key);
                let id = rec.id.clone();
                let bound = rec.end_bound();
                let known = rec.known.clone();
                let failure = waited.and_then(|w| rec.failure_of(w));
                let waited_alive = waited.is_some_and(|w| rec.downloads.iter().any(|d| d.id == w));
                let any_headers = rec.downloads.iter().any(|d| d.headers);
                let first = rec.downloads.first().map(|d| d.id);
                // First byte from 0 that is not in the cache.
                let mut missing = 0;
                loop {
                    if bound.is_some_and(|b| missing >= b) {
                        break;
                    }
                    let idx = missing / cs;
                    match g.cache.peek(&(id.clone(), idx)) {
                        Some(e) if chunk_complete(e.data.len(), idx, cs as usize, bound) => missing = (idx + 1) * cs,
                        Some(e) => {
                            missing = idx * cs + e.data.len() as u64;
                            break;
                        }
                        None => break,
                    }
                }
                let fully_cached = bound.is_some_and(|b| missing >= b);
                if let (true, Some(k)) = (fully_cached, &known) {
                    Step::Done(k.clone())
                } else if let Some(e) = failure {
                    Step::Fail(e)
                } else if let (Some(k), true) = (&known, any_headers || known.as_ref().is_some_and(|k| k.complete)) {
                    // Headers already told what there is to know. No download starts here: a
                    // reopened file is often served from the kernel's page cache, or not read
                    // at all (a file manager's stat-and-close), and a request spent on it would
                    // be wasted; the first read that misses starts one.
                    Step::Done(k.clone())
                } else if let (true, Some(k)) = (waited.is_some() && !waited_alive, &known) {
                    Step::Done(k.clone())
                } else if let Some(d) = first {
                    waited = Some(d);
                    Step::Wait
                } else if starts >= MAX_STARTS {
                    Step::Fail(MediaError::Failed(format!("recording {id}: downloads keep stopping before their headers")))
                } else {
                    starts += 1;
                    waited = Some(sh.start_download(g, &id, missing, missing, prio));
                    Step::Wait
                }
            };
            match step {
                Step::Done(k) => return Ok(k),
                Step::Fail(e) => return Err(e),
                Step::Wait => notified.await,
            }
        }
    }

    /// Exactly the bytes `[offset, offset+size)` of the content; shorter only at EOF, empty at or
    /// after EOF. Served from memory when present, else from a (shared) download as bytes arrive.
    pub async fn read(
        &self,
        key: &RecordingKey,
        offset: u64,
        size: u32,
        prio: Priority,
    ) -> Result<Bytes, MediaError> {
        tokio::time::timeout(self.shared.config.read_timeout, self.read_inner(key, offset, size, prio))
            .await
            .map_err(|_| MediaError::TimedOut)?
    }

    async fn read_inner(&self, key: &RecordingKey, offset: u64, size: u32, prio: Priority) -> Result<Bytes, MediaError> {
        let sh = &self.shared;
        let cs = sh.cs();
        let cfg = &sh.config;
        let want_end = offset.saturating_add(size as u64);
        let mut out = BytesMut::with_capacity(size as usize);
        let mut pos = offset;
        let (data, moved) = {
            let mut g = sh.lock();
            let rec = g.rec(key);
            (rec.data.clone(), rec.moved.clone())
        };
        let mut waited: Option<u64> = None;
        let mut starts = 0;
        let mut first_pass = true;
        loop {
            let notified = data.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let step = {
                let mut g = sh.lock();
                let g = &mut *g;
                let id = g.rec(key).id.clone();
                let end = match g.recs[&id].end_bound() {
                    Some(b) => want_end.min(b),
                    None => want_end,
                };
                let before = pos;
                g.copy_present(&id, &mut pos, end, cs, &mut out);
                if pos > before {
                    starts = 0;
                }
                let rec = g.recs.get_mut(&id).expect("made above");
                let far = cfg.far_seek;
                if first_pass {
                    // Tell the download whose range covers this read how far its reader is.
                    let covering = rec
                        .downloads
                        .iter_mut()
                        .filter(|d| d.start <= offset && offset <= d.pos.saturating_add(far))
                        .max_by_key(|d| d.start);
                    if let Some(d) = covering {
                        d.last_read = Instant::now();
                        d.reader_pos = d.reader_pos.max(want_end);
                        moved.notify_waiters();
                    }
                }
                if pos >= end {
                    let hit = first_pass;
                    if hit {
                        g.stats.cache_hits += 1;
                    } else {
                        g.stats.cache_misses += 1;
                    }
                    Step::Done(())
                } else if let Some(e) = waited.and_then(|w| rec.failure_of(w)) {
                    g.stats.cache_misses += 1;
                    Step::Fail(e)
                } else if let Some(d) = rec
                    .downloads
                    .iter_mut()
                    .filter(|d| d.pos <= pos && pos <= d.pos.saturating_add(far))
                    .max_by_key(|d| d.pos)
                {
                    d.reader_pos = d.reader_pos.max(want_end);
                    d.last_read = Instant::now();
                    moved.notify_waiters();
                    waited = Some(d.id);
                    Step::Wait
                } else if starts >= MAX_STARTS {
                    g.stats.cache_misses += 1;
                    Step::Fail(MediaError::Failed(format!(
                        "recording {id}: bytes at {pos} were evicted before they could be read \
                         {MAX_STARTS} times (cache budget too small for the readers)"
                    )))
                } else {
                    starts += 1;
                    waited = Some(sh.start_download(g, &id, pos, want_end, prio));
                    Step::Wait
                }
            };
            match step {
                Step::Done(()) => return Ok(out.freeze()),
                Step::Fail(e) => return Err(e),
                Step::Wait => {
                    first_pass = false;
                    notified.await;
                }
            }
        }
    }

    /// One reader fewer. When the last one closes, paused downloads of the recording stop at once.
    pub fn close(&self, key: &RecordingKey) {
        let mut g = self.shared.lock();
        let rec = g.rec(key);
        rec.readers = rec.readers.saturating_sub(1);
        if rec.readers == 0 {
            rec.closed = true;
            rec.moved.notify_waiters();
        }
    }

    /// Size and content type learned from any response (kept beyond eviction).
    pub fn known(&self, id: &str) -> Option<Known> {
        self.shared.lock().recs.get(id).and_then(|r| r.known.clone())
    }

    /// Counters; `bytes_cached` is the current total.
    pub fn stats(&self) -> MediaStats {
        let g = self.shared.lock();
        MediaStats { bytes_cached: g.total(), ..g.stats.clone() }
    }
}

/// What a download task does next (decided under the lock).
enum Next {
    Pull,
    Pause(Instant),
    Stop,
}

/// The task of one download; see the module docs.
#[allow(clippy::too_many_arguments)]
async fn download_task(
    sh: Arc<Shared>,
    key: RecordingKey,
    id: Arc<str>,
    download: u64,
    start: u64,
    prio: Priority,
    data: Arc<Notify>,
    moved: Arc<Notify>,
) {
    let cs = sh.cs();
    let budget = sh.config.cache_bytes;
    let opened = sh.source.open(&key, start, prio).await;
    let mut body = match opened {
        Ok(body) => body,
        Err(e) => {
            tracing::debug!(recording = %id, download, error = %e, "media request failed");
            sh.lock().end_download(&id, download, End::Failed(e), cs, budget);
            return;
        }
    };
    {
        let mut g = sh.lock();
        let Some(rec) = g.recs.get_mut(&id) else { return };
        let Some(d) = rec.downloads.iter_mut().find(|d| d.id == download) else { return };
        d.headers = true;
        rec.learn(body.total_len(), body.content_type());
        data.notify_waiters();
    }
    loop {
        let notified = moved.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next = {
            let mut g = sh.lock();
            let Some(rec) = g.recs.get_mut(&id) else { return };
            let closed = rec.closed;
            let Some(d) = rec.downloads.iter_mut().find(|d| d.id == download) else { return };
            if d.pos < d.reader_pos.saturating_add(sh.config.readahead) {
                Next::Pull
            } else if closed {
                g.end_download(&id, download, End::Closed, cs, budget);
                Next::Stop
            } else if d.last_read + sh.config.idle_timeout <= Instant::now() {
                g.end_download(&id, download, End::Idle, cs, budget);
                Next::Stop
            } else {
                Next::Pause(d.last_read + sh.config.idle_timeout)
            }
        };
        match next {
            Next::Stop => return,
            Next::Pause(deadline) => {
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
                continue;
            }
            Next::Pull => {}
        }
        let piece = body.next_chunk().await;
        let mut g = sh.lock();
        let g = &mut *g;
        let Some(rec) = g.recs.get_mut(&id) else { return };
        if !rec.downloads.iter().any(|d| d.id == download) {
            return;
        }
        let piece = match piece {
            Ok(Some(p)) => p,
            Ok(None) => {
                let d = rec.downloads.iter().find(|d| d.id == download).expect("checked");
                let (pos, dstart) = (d.pos, d.start);
                let end = match rec.exact_size() {
                    Some(total) if pos < total => End::Failed(MediaError::Failed(format!(
                        "recording {id}: body ended at byte {pos} of {total}"
                    ))),
                    Some(_) => End::Eof,
                    None if pos > dstart || dstart == 0 => {
                        rec.learn(Some(pos), None);
                        End::Eof
                    }
                    None => {
                        // A Range at or past the end, length unknown: only an upper bound.
                        rec.size_upper = Some(rec.size_upper.map_or(pos, |u| u.min(pos)));
                        End::Eof
                    }
                };
                g.end_download(&id, download, end, cs, budget);
                return;
            }
            Err(e) => {
                tracing::debug!(recording = %id, download, error = %e, "media body failed");
                g.end_download(&id, download, End::Failed(e), cs, budget);
                return;
            }
        };
        let total = rec.exact_size();
        let rid = rec.id.clone();
        let d = rec.downloads.iter_mut().find(|d| d.id == download).expect("checked");
        if total.is_some_and(|t| d.pos + piece.len() as u64 > t) {
            let e = MediaError::Failed(format!("recording {id}: body longer than its length"));
            g.end_download(&id, download, End::Failed(e), cs, budget);
            return;
        }
        let mut rest = piece;
        let mut full = Vec::new();
        while !rest.is_empty() {
            let take = (cs - d.buf.len()).min(rest.len());
            d.buf.extend_from_slice(&rest[..take]);
            rest = rest.slice(take..);
            d.pos += take as u64;
            g.buffered_bytes += take as u64;
            if d.buf.len() == cs || total == Some(d.pos) {
                let chunk = d.buf.split().freeze();
                g.buffered_bytes -= chunk.len() as u64;
                full.push(((rid.clone(), d.buf_start / cs as u64), chunk));
                d.buf_start = d.pos;
                d.buf = BytesMut::with_capacity(cs);
            }
        }
        let (pos, at_boundary) = (d.pos, d.buf.is_empty());
        rec.saw(pos);
        for (k, chunk) in full {
            g.insert(k, chunk);
        }
        g.evict(budget);
        data.notify_waiters();
        if total == Some(pos) {
            g.end_download(&id, download, End::Eof, cs, budget);
            return;
        }
        if at_boundary {
            // Merge: never fetch bytes that are cached or that another stream is fetching.
            let next_cached = g
                .cache
                .peek(&(rid.clone(), pos / cs as u64))
                .is_some_and(|e| chunk_complete(e.data.len(), pos / cs as u64, cs, total));
            let covered = g.recs[&id].downloads.iter().any(|o| o.id != download && o.start <= pos && pos <= o.pos);
            if next_cached || covered {
                g.end_download(&id, download, End::Merged, cs, budget);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
