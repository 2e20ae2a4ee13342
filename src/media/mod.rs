//! Recording media: lazy opening, one shared streaming download per recording, and a
//! byte-budgeted LRU chunk cache.
//!
//! Players read a recording sequentially with occasional seeks, several programs may read the same
//! file at once, and media requests are the scarcest part of the API budget. So each recording costs
//! one streaming request, every reader of it is served from that stream as bytes arrive, bytes stay
//! in memory (within a global budget) for re-reads, and memory stays bounded however many files are
//! open. The layer knows nothing of FUSE or HTTP: it reads from a [`MediaSource`] (an adapter
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
//!    fail at once while the recording cools down after a failure and no byte is present;
//! 2. copy what is present, from LRU entries and download buffers. The first read of an entry
//!    does not refresh it, a second one does: a chunk read once by a sequential reader is the
//!    least likely to be wanted again, while chunks streamed ahead of slower readers are not read
//!    yet. Refreshing on first read evicted those (32 readers under a small budget fetched a
//!    third of their bytes twice). Eviction also takes read entries before unread ones, so
//!    what was streamed ahead for a reader stays until it is read (see `Inner::evict`), and a
//!    recording played twice is refreshed and kept;
//! 3. if the range is complete, return it (the first pass completing is a cache hit);
//! 4. else, if the download it waited on failed, return that error: the read is over (the
//!    download already spent its retries), and the recording cools down (see the budget below);
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
//! **A download task** sends requests (each one [`MediaSource::open`]) and pulls their bodies:
//! - after the headers it checks that the response belongs to the same content as every earlier
//!   one (same stated length, content type and validator; a length learned at a clean end
//!   counts too) and learns what it says; a mismatch fails the download, so bytes of two
//!   different contents are never mixed;
//! - *backpressure*: when `pos >= reader_pos + readahead` it stops polling the body (the transport's
//!   flow control pushes back to the server). While paused it stops for good if every reader closed
//!   the file, or if no read came for `idle_timeout` (dropping the body drops the connection); else
//!   it sleeps until a reader moves on or the idle deadline;
//! - pull a piece, append it, move full chunks to the LRU, evict, wake readers;
//! - a clean end of the body means what the response said ([`BodyEnd`]): the content's end (the
//!   size is then exact even without Content-Length), the end of a partial range (one more
//!   request continues from there), nothing at the offset (an upper bound on the size), or a
//!   connection closed without a length, which a drop looks like too: one more request confirms
//!   the end (it ends there again, or answers 416) or shows a drop (it goes on); a WAV whose RIFF
//!   header states a longer length, or an MP3 whose last frame goes past the end, dropped,
//!   however many answers end there (see `format`);
//! - a drop (a body error after new bytes) resumes at once with a Range request from `pos`; a
//!   request that brings no new byte (5xx, 429, transport error, a drop before any byte) is a
//!   *strike* and the next waits a backoff. See **The request budget**;
//! - it also ends when the next chunk is already cached or covered by another download of the
//!   same recording (two streams never fetch the same bytes twice), when stopped (idle, closed,
//!   replaced), or before a retry nobody is waiting for any more. On every end its buffer goes
//!   to the LRU as a partial entry, so a later read resumes with one Range request.
//!
//! **The request budget.** Every request made for a recording is made here, and bounded here:
//! the media source sends each request once and never retries. Per recording, requests that
//! bring no new byte may happen [`MAX_STRIKES`] times, and a drop after new bytes buys one more
//! request (at most [`MAX_DROPS`] of them); the count starts again once a download ends
//! without failing. Past the bound the download fails with one log line naming the recording
//! and the cause, and its waiters get the error (EIO). A failure that ends a download
//! (the budget spent, a 404, a refusal, a mismatch) also starts a *cool-down*: for a second,
//! doubling with each failure in a row up to a minute, reads and opens of that recording fail at
//! once with the same error instead of spending again, so a program that retries in a loop
//! cannot turn one broken recording into a stream of requests. A read never waits longer than
//! `read_timeout`, and a download does not retry once nobody has asked for its bytes within
//! `read_timeout`: the requests stop with the reader.
//!
//! Hence: a complete sequential read spends exactly one request (when nothing drops and the server
//! does not cut ranges short); a re-read within the budget spends none; a near seek is served by
//! the stream, a far one spends one Range request.
//!
//! **Memory**: the byte total counts the LRU *and* the download buffers, and eviction keeps it
//! within `cache_bytes`, so memory is at most `max(cache_bytes, buffers)`. Buffers are less than
//! one chunk per live download, and a download lives only while it is read: it pauses `readahead`
//! ahead of its readers and closes after `idle_timeout` without reads (or at once when the file is
//! closed), so open but idle files hold nothing but evictable cache entries. With the defaults
//! (256 MiB, 256 KiB chunks) the budget is exceeded only past 1024 downloads read at once.
//!
//! # The tier below memory
//!
//! With a [`Tier`] ([`Media::with_tier`]; the disk store in production), what downloads fetch
//! also goes below the LRU, so that it outlives the process: a tier holds, per recording, a
//! *prefix* of its content from byte 0 (all of it once complete), its size and content type
//! ([`StoredRecording`]). This layer names no concrete tier: the trait is all it knows, so a
//! tier added later (a shared bucket below the disk, stacked into one `Tier`; see "Adding a
//! tier" in [`crate::store`]) changes nothing here. The algorithm above is unchanged except in
//! three places:
//! - **reads**: a read that misses memory at `X` while the tier holds `X` is served from it:
//!   the chunks from `X`'s on (the read and [`DISK_READ_CHUNKS`] chunks more, up to the stored
//!   end) are read in a blocking task ([`Tier::read`]) and go into the LRU, as if a download had
//!   brought them. No request. Before a download starts in the chunk where the stored prefix
//!   ends, that chunk's stored bytes go into the LRU as a partial entry, so the download takes
//!   them over and its request starts exactly at the stored end: a recording half read by an
//!   earlier mount costs one Range request for the rest;
//! - **what is known**: a recording the tier holds starts with the tier's size and content
//!   type (and bytes seen up to its stored end), so after a restart [`Media::known`] is exact and
//!   [`Media::open`] spends no request (no headers are needed), and a later response that
//!   disagrees with them fails as any disagreeing response does;
//! - **downloads** that start within the stored prefix (normally at its end) write their bytes
//!   through to the tier as they arrive, in order ([`Tier::writer`]); the tier keeps only bytes
//!   that continue its prefix. A download past the prefix (a far seek) does not write. Writing
//!   never blocks a download on the tier: it only waits for room ([`TierWriter::reserve`]),
//!   outside the lock.
//!
//! A tier checks what it holds and discards what does not match (the disk store: length at
//! open, checksum at first read), and a tier that fails or fills only stops writing: either way
//! the recording is then fetched as if there were no tier, and a reader never gets an error from
//! it. An open recording holds the tier's lease ([`Tier::lease`]) so the tier never evicts it
//! while it is read. The request budget, cool-downs and memory bound are those above: tier reads
//! are not requests, and their bytes count in the LRU's budget like any others.
//!
//! A recording a local tier holds complete need not come through this layer at all:
//! [`Media::complete_file`] hands out its checked file (with a lease, [`Tier::open_complete`]),
//! so that the FUSE adapter can have the kernel read it directly (passthrough). Those reads never
//! reach [`Media::read`], cost no memory budget and show in no counter here. A tier with no local
//! files has none to hand out, and its recordings are read through this layer.
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
//! The tier is asked under the lock only what it keeps in memory ([`Tier::get`], a lease,
//! queueing bytes with [`TierWriter::append`]); its I/O ([`Tier::read`],
//! [`Tier::open_complete`]) runs in `spawn_blocking` or on its own threads, never under this lock.

pub mod fake;
mod format;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use lru::LruCache;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

pub use crate::api::{BodyEnd, Priority, Skipped};
use crate::store::{CompleteFile, StoredRecording, Tier, TierLease, TierWriter};
use format::{MPEG_TAIL, ends_inside_an_mpeg_frame, wav_cut, wav_length};

/// A boxed, sendable future (the traits are object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Downloads one recording keeps (two readers at different places, a probe of the end of the file,
/// a seek); starting one more stops the least recently read paused one. More exist only while more
/// readers than this wait at different places at once (one each).
pub const MAX_DOWNLOADS: usize = 4;

/// Most downloads a single read starts without receiving a byte (see the algorithm, step 6).
pub const MAX_STARTS: u32 = 3;

/// Chunks a read that is served from the tier below memory reads beyond its own end (fewer
/// blocking reads for a sequential reader; they go to the LRU like a download's read-ahead).
pub const DISK_READ_CHUNKS: u64 = 4;

/// Failures remembered per recording so that the readers that waited on a download get its error.
const MAX_FAILURES_KEPT: usize = 16;

/// Requests for one recording that may bring no new byte before its download fails (see the
/// request budget in the module docs).
pub const MAX_STRIKES: u32 = 3;

/// Drops after new bytes that one recording's downloads survive before they fail; each one is
/// paid for by the request that resumes it.
pub const MAX_DROPS: u32 = 32;

/// First cool-down after a failure; it doubles with each failure in a row, up to [`COOL_DOWN_MAX`].
const COOL_DOWN_FIRST: Duration = Duration::from_secs(1);
const COOL_DOWN_MAX: Duration = Duration::from_secs(60);

/// What a read or open gets for bytes that would need a request while the API is unreachable.
fn offline_error(id: &str) -> MediaError {
    MediaError::Transient(format!(
        "recording {id}: not kept here, and the API is unreachable"
    ))
}

/// Backoff before the request after the `n`th strike: 250 ms, doubling, at most 4 s. (The
/// rate-limit pacer adds any hold a 429 or `Retry-After` asked for.)
fn strike_backoff(n: u32) -> Duration {
    Duration::from_millis(250).saturating_mul(1 << n.saturating_sub(1).min(4))
}

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
    /// A failure another request may not have: a drop, a stall, 5xx, 429, a transport error.
    /// The media layer retries these within its budget.
    #[error("media request interrupted: {0}")]
    Transient(String),
    /// A failure that another request would repeat (a refusal, a response that does not belong
    /// to the recording), or the request budget spent.
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
    /// Exact length of the whole recording (not of the range): Content-Length of a 200, the total
    /// of the Content-Range of a 206 or 416, or, after a clean end of a body that ran to the end
    /// of the content, where it ended. `None` while unknown.
    fn total_len(&self) -> Option<u64>;
    /// What a clean end of this body means.
    fn end(&self) -> BodyEnd;
    /// `ETag` or `Last-Modified`: a response with another one is not the same content.
    fn validator(&self) -> Option<&str>;
    /// After a clean end: where the body stopped, when that is before the offset asked for (a
    /// whole body that was shorter than the offset). `None`: it stopped at the position reached.
    fn ended_at(&self) -> Option<u64> {
        None
    }
    /// What the body skipped before the offset asked for ([`Skipped`]): after an end before
    /// that offset ([`MediaBody::ended_at`]), the content's first bytes and those before the end.
    fn skipped(&self) -> Skipped {
        Skipped::default()
    }
    /// The next bytes, in order, starting at the offset given to [`MediaSource::open`]; `Ok(None)`
    /// at a clean end (see [`MediaBody::end`]). A body never resumes: an error is final for it.
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, MediaError>>;
}

/// Where media comes from. One call = one request, never retried by the source.
pub trait MediaSource: Send + Sync + 'static {
    /// Requests the recording from `offset` (`offset > 0`: a Range request) and returns once the
    /// response headers are in. At or past the end it returns a body that ends at once (an HTTP
    /// adapter maps 416 to that), telling the total length if the response did.
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
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Known {
    /// The exact size, once a response stated it or a body ended cleanly at the content's end.
    /// Never a lower bound: a size published to the kernel is the size.
    pub size: Option<u64>,
    /// Content type the media host answered.
    pub content_type: Option<String>,
}

/// Counters of the media layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MediaStats {
    /// Requests issued to the source.
    pub opens: u64,
    /// Requests that resumed a download after a drop or continued a partial range.
    pub resumes: u64,
    /// Downloads that failed for good (budget spent, refused, mismatch); each logged once.
    pub failures: u64,
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
    /// Reads of the tier that brought bytes into memory (no request).
    pub disk_reads: u64,
    /// Files of recordings complete in the tier handed out for the kernel to read directly.
    pub complete_files: u64,
}

/// One download as [`Media::downloads`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadInfo {
    /// Recording id.
    pub id: String,
    /// The content offset its first request asked for.
    pub start: u64,
    /// The content offset it has reached.
    pub pos: u64,
    /// The recording's size, when known.
    pub size: Option<u64>,
    /// Its response headers are in; until then its request waits (for the pacer, a
    /// connection, the server).
    pub started: bool,
    /// Open handles of the recording.
    pub readers: u32,
}

/// The media layer. See the module docs.
pub struct Media {
    shared: Arc<Shared>,
}

struct Shared {
    source: Arc<dyn MediaSource>,
    config: MediaConfig,
    tier: Option<Arc<dyn Tier>>,
    inner: Mutex<Inner>,
    /// The API is known to be unreachable: no download starts (see [`Media::set_offline`]).
    offline: AtomicBool,
}

type ChunkKey = (Arc<str>, u64);

/// What a recording's first bytes say of where it ends: a RIFF (WAV) file, and the length its
/// header states. Kept in [`Rec`] once seen: the chunk that held them may be evicted before
/// the end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Head {
    riff: bool,
    wav_length: Option<u64>,
}

impl Head {
    fn of(bytes: &[u8]) -> Head {
        Head {
            riff: bytes.starts_with(b"RIFF"),
            wav_length: wav_length(bytes),
        }
    }

    /// What this knows, and what `other` knows besides.
    fn or(self, other: Head) -> Head {
        Head {
            riff: self.riff || other.riff,
            wav_length: self.wav_length.or(other.wav_length),
        }
    }
}

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
    /// The tier, asked for what it holds when a recording is first seen.
    tier: Option<Arc<dyn Tier>>,
}

struct Rec {
    id: Arc<str>,
    /// Latest key seen (its URI is used for new requests).
    key: RecordingKey,
    known: Option<Known>,
    /// The validator (`ETag`) responses carried, to tell a changed content.
    validator: Option<String>,
    /// No byte at or past this offset exists (a Range past the end ended at once, length unknown).
    size_upper: Option<u64>,
    /// Bytes up to here are known to exist (delivered by some response): a lower bound, never
    /// published as the size.
    seen: u64,
    /// Where a body delimited by its connection ended, until a second answer confirms it.
    candidate_end: Option<u64>,
    /// What its first bytes said, kept from the first time they passed ([`Head`]).
    head: Head,
    /// Requests that brought no new byte, and drops after new bytes, since the last download
    /// ended without failing (the request budget).
    strikes: u32,
    drops: u32,
    /// After a failure that ended a download: until when reads fail at once, with what, and how
    /// many failures in a row led here.
    cool_down: Option<(Instant, MediaError)>,
    failures_in_a_row: u32,
    /// Open handles (open minus close).
    readers: u32,
    /// Held while a reader has the recording open: the tier does not evict it.
    lease: Option<TierLease>,
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
    /// Read `(from, len)` from the tier into the LRU, then look again.
    Load(u64, usize),
}

/// Bytes of the tier to bring into memory (see [`Shared::tier_wanted`]).
#[derive(Clone, Copy)]
struct TierLoad {
    from: u64,
    len: usize,
    /// The store holds the byte asked for (else only the stored part of its chunk before it).
    covers: bool,
}

/// Most tier loads one read or open makes (a read needs one or two; this only bounds a loop with
/// a store that keeps changing under it).
const MAX_TIER_LOADS: u32 = 8;

impl Rec {
    /// A recording first seen, starting from what the tier holds of it.
    fn new(key: &RecordingKey, stored: Option<StoredRecording>) -> Self {
        Rec {
            id: Arc::from(key.id.as_str()),
            key: key.clone(),
            known: stored.as_ref().map(|s| Known {
                size: s.size,
                content_type: s.content_type.clone(),
            }),
            validator: None,
            size_upper: None,
            seen: stored.map_or(0, |s| s.stored),
            candidate_end: None,
            head: Head::default(),
            strikes: 0,
            drops: 0,
            cool_down: None,
            failures_in_a_row: 0,
            readers: 0,
            lease: None,
            closed: false,
            downloads: Vec::new(),
            failures: VecDeque::new(),
            data: Arc::new(Notify::new()),
            moved: Arc::new(Notify::new()),
        }
    }

    fn exact_size(&self) -> Option<u64> {
        self.known.as_ref().and_then(|k| k.size)
    }

    /// Tells the download whose range covers a read of `[offset, want_end)` how far its reader
    /// is (see "A read" in the module docs), once per read.
    fn note_reader(&mut self, offset: u64, want_end: u64, far: u64) {
        let covering = self
            .downloads
            .iter_mut()
            .filter(|d| d.start <= offset && offset <= d.pos.saturating_add(far))
            .max_by_key(|d| d.start);
        if let Some(d) = covering {
            d.last_read = Instant::now();
            d.reader_pos = d.reader_pos.max(want_end);
            self.moved.notify_waiters();
        }
    }

    /// No byte at or past this offset exists.
    fn end_bound(&self) -> Option<u64> {
        match (self.exact_size(), self.size_upper) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn failure_of(&self, download: u64) -> Option<MediaError> {
        self.failures
            .iter()
            .find(|(id, _)| *id == download)
            .map(|(_, e)| e.clone())
    }

    /// Checks a response's headers against what earlier responses said. `Err` means the response
    /// is not the same content: its bytes must not be mixed with what is cached.
    fn check(
        &self,
        total: Option<u64>,
        content_type: Option<&str>,
        validator: Option<&str>,
    ) -> Result<(), String> {
        if let (Some(a), Some(b)) = (self.exact_size(), total)
            && a != b
        {
            return Err(format!("length was {a}, this response says {b}"));
        }
        if let Some(t) = total {
            if t < self.seen {
                return Err(format!(
                    "{} bytes were received, this response says the length is {t}",
                    self.seen
                ));
            }
            if self.size_upper.is_some_and(|u| t > u) {
                return Err(format!(
                    "an earlier response ended at {}, this one says the length is {t}",
                    self.size_upper.unwrap_or(0)
                ));
            }
        }
        if let (Some(a), Some(b)) = (
            self.known.as_ref().and_then(|k| k.content_type.as_deref()),
            content_type,
        ) && a != b
        {
            return Err(format!("content type was {a}, this response says {b}"));
        }
        if let (Some(a), Some(b)) = (self.validator.as_deref(), validator)
            && a != b
        {
            return Err("the validator (ETag) changed".to_string());
        }
        Ok(())
    }

    /// Takes in what a response said (after [`Rec::check`]).
    fn learn(&mut self, total: Option<u64>, content_type: Option<&str>, validator: Option<&str>) {
        let k = self.known.get_or_insert_with(Known::default);
        if total.is_some() {
            k.size = total;
        }
        if let Some(ct) = content_type {
            k.content_type.get_or_insert_with(|| ct.to_string());
        }
        if let Some(v) = validator {
            self.validator.get_or_insert_with(|| v.to_string());
        }
    }

    /// Nothing exists at or past `at`. With bytes known up to `at`, that is the exact size.
    fn bound(&mut self, at: u64) {
        self.size_upper = Some(self.size_upper.map_or(at, |u| u.min(at)));
        if self.seen >= at && self.exact_size().is_none() {
            self.known.get_or_insert_with(Known::default).size = Some(at);
        }
    }

    /// The failure reads get at once while cooling down, if it is still in force.
    fn cooling(&self, now: Instant) -> Option<MediaError> {
        self.cool_down
            .as_ref()
            .filter(|(until, _)| *until > now)
            .map(|(_, e)| e.clone())
    }
}

fn chunk_complete(len: usize, idx: u64, cs: usize, size: Option<u64>) -> bool {
    len >= cs || size.is_some_and(|s| idx * cs as u64 + len as u64 >= s)
}

impl Inner {
    /// What the recording's first bytes say of its format (see [`Head`]), when they are in
    /// memory (chunk 0 in the LRU, or a download buffer that starts at 0).
    fn head(&self, id: &Arc<str>) -> Head {
        if let Some(e) = self.cache.peek(&(id.clone(), 0)) {
            return Head::of(&e.data);
        }
        self.recs
            .get(id)
            .and_then(|r| r.downloads.iter().find(|d| d.buf_start == 0))
            .map_or_else(Head::default, |d| Head::of(&d.buf))
    }

    /// Up to `want` bytes that `download` delivered last, ending at its position: its buffer,
    /// after the end of the chunk before it when that is still in the LRU.
    fn tail(&self, id: &Arc<str>, download: u64, cs: usize, want: usize) -> Vec<u8> {
        let Some(d) = self
            .recs
            .get(id)
            .and_then(|r| r.downloads.iter().find(|d| d.id == download))
        else {
            return Vec::new();
        };
        // The whole chunks before the buffer, newest first, while they are cached.
        let mut pieces: Vec<&[u8]> = vec![&d.buf];
        let mut have = d.buf.len();
        let mut chunk = (d.buf_start % cs as u64 == 0).then(|| d.buf_start / cs as u64);
        while have < want {
            let Some(k) = chunk.and_then(|c| c.checked_sub(1)) else {
                break;
            };
            match self.cache.peek(&(id.clone(), k)) {
                Some(e) if e.data.len() == cs => {
                    pieces.push(&e.data);
                    have += cs;
                    chunk = Some(k);
                }
                _ => break,
            }
        }
        let mut out = Vec::with_capacity(have);
        for p in pieces.iter().rev() {
            out.extend_from_slice(p);
        }
        let extra = out.len().saturating_sub(want);
        out.drain(..extra);
        out
    }

    fn rec(&mut self, key: &RecordingKey) -> &mut Rec {
        if !self.recs.contains_key(key.id.as_str()) {
            let rec = Rec::new(key, self.tier.as_ref().and_then(|d| d.get(&key.id)));
            self.recs.insert(rec.id.clone(), rec);
        }
        let rec = self.recs.get_mut(key.id.as_str()).expect("inserted above");
        if rec.key.content_uri != key.content_uri {
            // A new place to fetch from (the call log's contentUri after the manual URL failed,
            // say): what failed at the old one says nothing about it.
            rec.key = key.clone();
            rec.cool_down = None;
            rec.strikes = 0;
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
            let victim = self
                .cache
                .iter()
                .rev()
                .find(|(_, e)| e.read)
                .map(|(k, _)| k.clone());
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
        if data.is_empty()
            || self
                .cache
                .peek(&key)
                .is_some_and(|old| old.data.len() >= data.len())
        {
            return;
        }
        let len = data.len() as u64;
        if let Some(old) = self.cache.put(key, Entry { data, read: false }) {
            self.cached_bytes -= old.data.len() as u64;
        }
        self.cached_bytes += len;
    }

    /// Copies the bytes of `[*pos, end)` that are present into `out`, advancing `*pos`. A read
    /// that one cached entry holds whole (a 128 KiB kernel read within a 256 KiB chunk: most
    /// reads) is not copied: `whole` gets a slice of the entry, which the reply writes to the
    /// kernel directly.
    fn copy_present(
        &mut self,
        id: &Arc<str>,
        pos: &mut u64,
        end: u64,
        cs: usize,
        out: &mut BytesMut,
        whole: &mut Option<Bytes>,
    ) {
        let cs64 = cs as u64;
        while *pos < end {
            let idx = *pos / cs64;
            let within = (*pos - idx * cs64) as usize;
            let want = (end - *pos).min(cs64 - within as u64) as usize;
            let key = (id.clone(), idx);
            let read_before = self
                .cache
                .peek_mut(&key)
                .map(|e| std::mem::replace(&mut e.read, true));
            if read_before == Some(true) {
                self.cache.promote(&key);
            }
            if let Some(entry) = self.cache.peek(&key).map(|e| &e.data) {
                if out.is_empty()
                    && whole.is_none()
                    && within + (end - *pos) as usize <= entry.len()
                {
                    let n = (end - *pos) as usize;
                    *whole = Some(entry.slice(within..within + n));
                    *pos = end;
                    return;
                }
                if within < entry.len() {
                    let n = want.min(entry.len() - within);
                    out.reserve((end - *pos) as usize);
                    out.extend_from_slice(&entry[within..within + n]);
                    *pos += n as u64;
                    continue;
                }
            }
            let rec = &self.recs[id];
            let Some(d) = rec
                .downloads
                .iter()
                .find(|d| d.buf_start <= *pos && *pos < d.pos)
            else {
                break;
            };
            let from = (*pos - d.buf_start) as usize;
            let n = want.min(d.buf.len() - from);
            out.reserve((end - *pos) as usize);
            out.extend_from_slice(&d.buf[from..from + n]);
            *pos += n as u64;
        }
    }

    /// Ends a download: its buffer goes to the LRU as a (partial) entry, its task is aborted, its
    /// waiters are woken (and get `Failed`'s error). A failure starts the recording's cool-down;
    /// any other end, once no download of the recording is left, starts its budget afresh.
    fn end_download(&mut self, id: &Arc<str>, download: u64, why: End, cs: usize, budget: u64) {
        let Some(rec) = self.recs.get_mut(id) else {
            return;
        };
        let Some(i) = rec.downloads.iter().position(|d| d.id == download) else {
            return;
        };
        let d = rec.downloads.swap_remove(i);
        tracing::debug!(recording = %id, download, start = d.start, pos = d.pos, why = ?why, "download ended");
        match why {
            End::Failed(e) => {
                rec.failures_in_a_row += 1;
                let pause = COOL_DOWN_FIRST
                    .saturating_mul(1 << (rec.failures_in_a_row - 1).min(6))
                    .min(COOL_DOWN_MAX);
                rec.cool_down = Some((Instant::now() + pause, e.clone()));
                rec.strikes = 0;
                rec.drops = 0;
                rec.failures.push_back((download, e));
                if rec.failures.len() > MAX_FAILURES_KEPT {
                    rec.failures.pop_front();
                }
                self.stats.failures += 1;
            }
            End::Eof => {
                rec.failures_in_a_row = 0;
                rec.cool_down = None;
                if rec.downloads.is_empty() {
                    rec.strikes = 0;
                    rec.drops = 0;
                }
            }
            _ if rec.downloads.is_empty() => {
                rec.strikes = 0;
                rec.drops = 0;
            }
            _ => {}
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

    /// What the tier holds that memory lacks, for a read of `[pos, end)` that memory
    /// cannot serve at `pos`: from `pos`'s chunk up to the read's end and [`DISK_READ_CHUNKS`]
    /// more (`covers`), or, when the store ends before `pos`, the stored part of `pos`'s chunk
    /// that the LRU does not hold (so that a download started at `pos` takes it over and its
    /// request starts at the stored end).
    fn tier_wanted(&self, g: &Inner, id: &Arc<str>, pos: u64, end: u64) -> Option<TierLoad> {
        let stored = self.tier.as_ref()?.get(id)?.stored;
        let cs = self.cs() as u64;
        let from = pos / cs * cs;
        let in_memory = g
            .cache
            .peek(&(id.clone(), pos / cs))
            .map_or(0, |e| e.data.len() as u64);
        let covers = stored > pos;
        if !covers && stored <= from + in_memory {
            return None;
        }
        let to = end
            .max(pos + 1)
            .div_ceil(cs)
            .saturating_add(DISK_READ_CHUNKS)
            .saturating_mul(cs)
            .min(stored);
        Some(TierLoad {
            from,
            len: (to - from) as usize,
            covers,
        })
    }

    /// Reads `[from, from + len)` (from a chunk boundary) from the tier in a blocking task
    /// and puts it into the LRU, chunk by chunk. `false` when the store had nothing there (it may
    /// have just discarded the recording as damaged).
    async fn load_from_tier(&self, id: &Arc<str>, from: u64, len: usize) -> bool {
        let Some(tier) = self.tier.clone() else {
            return false;
        };
        let key = id.to_string();
        let got = tokio::task::spawn_blocking(move || tier.read(&key, from, len))
            .await
            .ok()
            .flatten();
        let Some(bytes) = got.filter(|b| !b.is_empty()) else {
            return false;
        };
        let cs = self.cs();
        let mut g = self.lock();
        g.stats.disk_reads += 1;
        for (i, piece) in bytes.chunks(cs).enumerate() {
            // A copy per chunk: entries evicted one by one each free their memory.
            g.insert(
                (id.clone(), from / cs as u64 + i as u64),
                Bytes::copy_from_slice(piece),
            );
        }
        g.evict(self.config.cache_bytes);
        true
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
    pub fn new(source: Arc<dyn MediaSource>, config: MediaConfig) -> Arc<Media> {
        Media::with_tier(source, config, None)
    }

    /// A media layer over `source` with `tier` below its memory cache (see "The tier below
    /// memory" in the module docs); `None`: memory only, as [`Media::new`].
    pub fn with_tier(
        source: Arc<dyn MediaSource>,
        mut config: MediaConfig,
        tier: Option<Arc<dyn Tier>>,
    ) -> Arc<Media> {
        config.chunk_size = config.chunk_size.max(1);
        Arc::new(Media {
            shared: Arc::new(Shared {
                source,
                config,
                tier: tier.clone(),
                inner: Mutex::new(Inner {
                    cache: LruCache::unbounded(),
                    cached_bytes: 0,
                    buffered_bytes: 0,
                    recs: HashMap::new(),
                    next_download: 0,
                    stats: MediaStats::default(),
                    tier,
                }),
                offline: AtomicBool::new(false),
            }),
        })
    }

    /// Makes sure bytes can flow and counts one reader. Spends nothing when the whole recording is
    /// cached; otherwise starts (or joins) a download and waits for its response headers, so size
    /// and content type are known on return.
    pub async fn open(&self, key: &RecordingKey, prio: Priority) -> Result<Known, MediaError> {
        let known =
            tokio::time::timeout(self.shared.config.read_timeout, self.open_inner(key, prio))
                .await
                .map_err(|_| MediaError::TimedOut)??;
        let mut g = self.shared.lock();
        let tier = g.tier.clone();
        let rec = g.rec(key);
        rec.readers += 1;
        rec.closed = false;
        if rec.lease.is_none() {
            rec.lease = tier.map(|d| d.lease(&key.id));
        }
        Ok(known)
    }

    async fn open_inner(&self, key: &RecordingKey, prio: Priority) -> Result<Known, MediaError> {
        let sh = &self.shared;
        let cs = sh.cs() as u64;
        let (id, data) = {
            let mut g = sh.lock();
            let rec = g.rec(key);
            (rec.id.clone(), rec.data.clone())
        };
        let mut waited: Option<u64> = None;
        let mut starts = 0;
        let mut tier_loads = 0;
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
                let cooling = rec.cooling(Instant::now());
                // First byte from 0 that is not in the cache.
                let mut missing = 0;
                loop {
                    if bound.is_some_and(|b| missing >= b) {
                        break;
                    }
                    let idx = missing / cs;
                    match g.cache.peek(&(id.clone(), idx)) {
                        Some(e) if chunk_complete(e.data.len(), idx, cs as usize, bound) => {
                            missing = (idx + 1) * cs
                        }
                        Some(e) => {
                            missing = idx * cs + e.data.len() as u64;
                            break;
                        }
                        None => break,
                    }
                }
                // What the tier holds from 0 is not missing either.
                let stored = sh
                    .tier
                    .as_ref()
                    .and_then(|d| d.get(&id))
                    .map_or(0, |s| s.stored);
                let missing = missing.max(stored);
                let fully_cached = bound.is_some_and(|b| missing >= b);
                let tier_tail = if tier_loads < MAX_TIER_LOADS {
                    sh.tier_wanted(g, &id, missing, missing)
                } else {
                    None
                };
                if let (true, Some(k)) = (fully_cached, &known) {
                    Step::Done(k.clone())
                } else if let Some(e) = failure {
                    Step::Fail(e)
                } else if let (Some(k), true) = (
                    &known,
                    any_headers || known.as_ref().is_some_and(|k| k.size.is_some()),
                ) {
                    // Headers already told what there is to know. No download starts here: a
                    // reopened file is often served from the kernel's page cache, or not read
                    // at all (a file manager's stat-and-close), and a request spent on it would
                    // be wasted; the first read that misses starts one.
                    Step::Done(k.clone())
                } else if let (true, Some(k)) = (waited.is_some() && !waited_alive, &known) {
                    Step::Done(k.clone())
                } else if let (None, Some(e)) = (waited, cooling) {
                    Step::Fail(e)
                } else if let Some(d) = first {
                    waited = Some(d);
                    Step::Wait
                } else if starts >= MAX_STARTS {
                    Step::Fail(MediaError::Failed(format!(
                        "recording {id}: downloads keep stopping before their headers"
                    )))
                } else if let Some(TierLoad { from, len, .. }) = tier_tail {
                    // The stored part of the chunk where the download starts (see "The tier
                    // below memory").
                    Step::Load(from, len)
                } else if sh.offline.load(Ordering::Acquire) {
                    Step::Fail(offline_error(&id))
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
                Step::Load(from, len) => {
                    tier_loads += 1;
                    if !sh.load_from_tier(&id, from, len).await {
                        tier_loads = MAX_TIER_LOADS;
                    }
                }
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
        tokio::time::timeout(
            self.shared.config.read_timeout,
            self.read_inner(key, offset, size, prio),
        )
        .await
        .map_err(|_| MediaError::TimedOut)?
    }

    async fn read_inner(
        &self,
        key: &RecordingKey,
        offset: u64,
        size: u32,
        prio: Priority,
    ) -> Result<Bytes, MediaError> {
        let sh = &self.shared;
        let cs = sh.cs();
        let cfg = &sh.config;
        let want_end = offset.saturating_add(size as u64);
        // Allocated on the first byte that has to be copied (see `copy_present`).
        let mut out = BytesMut::new();
        let mut whole = None;
        let mut pos = offset;
        let (id, data, moved) = {
            let mut g = sh.lock();
            let rec = g.rec(key);
            (rec.id.clone(), rec.data.clone(), rec.moved.clone())
        };
        let mut waited: Option<u64> = None;
        let mut starts = 0;
        let mut tier_loads = 0;
        let mut first_pass = true;
        loop {
            let notified = data.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let step = {
                let mut g = sh.lock();
                let g = &mut *g;
                g.rec(key);
                let end = match g.recs[&id].end_bound() {
                    Some(b) => want_end.min(b),
                    None => want_end,
                };
                let before = pos;
                g.copy_present(&id, &mut pos, end, cs, &mut out, &mut whole);
                if pos > before {
                    starts = 0;
                }
                let tier = if pos < end && tier_loads < MAX_TIER_LOADS {
                    sh.tier_wanted(g, &id, pos, end)
                } else {
                    None
                };
                let rec = g.recs.get_mut(&id).expect("made above");
                let far = cfg.far_seek;
                if first_pass {
                    rec.note_reader(offset, want_end, far);
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
                } else if let Some(TierLoad {
                    from,
                    len,
                    covers: true,
                }) = tier
                {
                    Step::Load(from, len)
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
                } else if let Some(e) = rec.cooling(Instant::now()) {
                    g.stats.cache_misses += 1;
                    Step::Fail(e)
                } else if starts >= MAX_STARTS {
                    g.stats.cache_misses += 1;
                    Step::Fail(MediaError::Failed(format!(
                        "recording {id}: bytes at {pos} were evicted before they could be read \
                         {MAX_STARTS} times (cache budget too small for the readers)"
                    )))
                } else if let Some(TierLoad { from, len, .. }) = tier {
                    // The stored part of the chunk where the download starts (see "The tier
                    // below memory").
                    Step::Load(from, len)
                } else if sh.offline.load(Ordering::Acquire) {
                    g.stats.cache_misses += 1;
                    Step::Fail(offline_error(&id))
                } else {
                    starts += 1;
                    waited = Some(sh.start_download(g, &id, pos, want_end, prio));
                    Step::Wait
                }
            };
            match step {
                Step::Done(()) => return Ok(whole.unwrap_or_else(|| out.freeze())),
                Step::Fail(e) => return Err(e),
                Step::Wait => {
                    first_pass = false;
                    notified.await;
                }
                Step::Load(from, len) => {
                    first_pass = false;
                    tier_loads += 1;
                    if !sh.load_from_tier(&id, from, len).await {
                        tier_loads = MAX_TIER_LOADS;
                    }
                }
            }
        }
    }

    /// While the API is known to be unreachable, reads and opens are served from what memory and
    /// the tier below hold and fail at once for the rest, instead of each spending its request
    /// budget and waiting out `read_timeout`. Downloads already running go on.
    pub fn set_offline(&self, offline: bool) {
        self.shared.offline.store(offline, Ordering::Release);
    }

    /// One reader fewer. When the last one closes, paused downloads of the recording stop at once.
    pub fn close(&self, key: &RecordingKey) {
        let mut g = self.shared.lock();
        let rec = g.rec(key);
        rec.readers = rec.readers.saturating_sub(1);
        if rec.readers == 0 {
            rec.closed = true;
            rec.lease = None;
            rec.moved.notify_waiters();
        }
    }

    /// The file of a recording the tier holds complete, its content checked, with a lease
    /// that keeps it from eviction while it lives: what a kernel passthrough reads from (see "The
    /// tier below memory"). `None` without a tier or with one that keeps no local files, when it
    /// holds less than all of the recording, or when what it holds disagrees with what responses
    /// said. No request, and no read is counted: the bytes are not read here (only checked, once
    /// per process).
    pub async fn complete_file(&self, key: &RecordingKey) -> Option<CompleteFile> {
        let tier = self.shared.tier.clone()?;
        let size = tier.get(&key.id).filter(|s| s.complete())?.stored;
        if self.known(&key.id).and_then(|k| k.size) != Some(size) {
            return None;
        }
        let id = key.id.clone();
        let file = tokio::task::spawn_blocking(move || tier.open_complete(&id))
            .await
            .ok()
            .flatten()
            .filter(|f| f.size == size);
        if file.is_some() {
            self.shared.lock().stats.complete_files += 1;
        }
        file
    }

    /// Size and content type learned from any response (kept beyond eviction), or held by the
    /// tier from an earlier process.
    pub fn known(&self, id: &str) -> Option<Known> {
        let g = self.shared.lock();
        match g.recs.get(id) {
            Some(r) => r.known.clone(),
            None => g.tier.as_ref()?.get(id).map(|s| Known {
                size: s.size,
                content_type: s.content_type,
            }),
        }
    }

    /// The byte budget of the memory cache.
    pub fn cache_cap(&self) -> u64 {
        self.shared.config.cache_bytes
    }

    /// The downloads running now (including those whose request has not gone yet), oldest
    /// first per recording. No request.
    pub fn downloads(&self) -> Vec<DownloadInfo> {
        let g = self.shared.lock();
        let mut out: Vec<DownloadInfo> = g
            .recs
            .values()
            .flat_map(|r| {
                r.downloads.iter().map(|d| DownloadInfo {
                    id: r.id.to_string(),
                    start: d.start,
                    pos: d.pos,
                    size: r.known.as_ref().and_then(|k| k.size),
                    started: d.headers,
                    readers: r.readers,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.id, a.start).cmp(&(&b.id, b.start)));
        out
    }

    /// How many of `ids` this layer has never been asked for and the tier below does not hold
    /// complete: what reading them would cost in requests, one each. No request.
    pub fn unfetched<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> usize {
        let g = self.shared.lock();
        ids.into_iter()
            .filter(|id| {
                !g.recs.contains_key(*id)
                    && !g
                        .tier
                        .as_ref()
                        .and_then(|t| t.get(id))
                        .is_some_and(|s| s.complete())
            })
            .count()
    }

    /// Counters; `bytes_cached` is the current total.
    pub fn stats(&self) -> MediaStats {
        let g = self.shared.lock();
        MediaStats {
            bytes_cached: g.total(),
            ..g.stats.clone()
        }
    }
}

/// Where `download` has reached (its position), or 0 when it is gone.
fn body_pos_of(g: &Inner, id: &Arc<str>, download: u64) -> u64 {
    g.recs
        .get(id)
        .and_then(|r| r.downloads.iter().find(|d| d.id == download))
        .map_or(0, |d| d.pos)
}

/// What a download task does next (decided under the lock).
enum Next {
    Pull,
    Pause(Instant),
    Stop,
}

/// What a download does after a failed request or a broken body.
enum Retry {
    /// Send the next request after this pause.
    After(Duration),
    /// The download has ended (failed for good, or nobody waits for it any more).
    Ended,
}

/// The task of one download; see the module docs. Each turn of the outer loop is one request.
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
    let mut at = start;
    let mut first = true;
    // Writes through to the tier when it continues its stored prefix (see "The tier below
    // memory").
    let mut tier: Option<Box<dyn TierWriter>> = sh
        .tier
        .as_ref()
        .filter(|d| d.get(&id).map_or(0, |s| s.stored) >= start)
        .map(|d| d.clone().writer(&id));
    loop {
        {
            let mut g = sh.lock();
            g.stats.opens += 1;
            if !first {
                g.stats.resumes += 1;
            }
        }
        first = false;
        // A request waits for the rate-limit pacer and then for its headers; if its reader gives
        // up meanwhile (its read timed out), the request is withdrawn instead of spent.
        let opened = tokio::select! {
            opened = sh.source.open(&key, at, prio) => opened,
            () = sh.unwanted(&id, download) => {
                tracing::debug!(recording = %id, download, at, "nobody waits any more; request withdrawn");
                sh.lock().end_download(&id, download, End::Idle, cs, budget);
                return;
            }
        };
        let mut body = match opened {
            Ok(body) => body,
            Err(e) => {
                tracing::debug!(recording = %id, download, at, error = %e, "media request failed");
                match sh.after_failure(&id, download, e, false) {
                    Retry::After(pause) => {
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    Retry::Ended => return,
                }
            }
        };
        {
            let mut g = sh.lock();
            let Some(rec) = g.recs.get_mut(&id) else {
                return;
            };
            if !rec.downloads.iter().any(|d| d.id == download) {
                return;
            }
            if let Err(detail) = rec.check(body.total_len(), body.content_type(), body.validator())
            {
                let e = MediaError::Failed(format!(
                    "recording {id}: the media host's answers disagree: {detail}"
                ));
                tracing::warn!("{e}");
                g.end_download(&id, download, End::Failed(e), cs, budget);
                return;
            }
            rec.learn(body.total_len(), body.content_type(), body.validator());
            if let Some(w) = tier.as_mut() {
                w.learn(rec.exact_size(), body.content_type());
            }
            let d = rec
                .downloads
                .iter_mut()
                .find(|d| d.id == download)
                .expect("checked");
            d.headers = true;
            data.notify_waiters();
        }
        // Those waiting for the headers (an open, to answer the kernel) go before this task
        // pulls the body: a body already in the socket buffer would otherwise be pulled (up to
        // the read-ahead, a whole typical recording) before the open is answered.
        tokio::task::yield_now().await;
        // Pull this response's body until it ends, breaks or is no longer wanted.
        let mut progressed = false;
        // This response ended where the content may end, and the next one is to confirm it.
        let mut confirming = false;
        let broke = loop {
            let notified = moved.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = {
                let mut g = sh.lock();
                let Some(rec) = g.recs.get_mut(&id) else {
                    return;
                };
                let closed = rec.closed;
                let Some(d) = rec.downloads.iter_mut().find(|d| d.id == download) else {
                    return;
                };
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
            // Room in the tier writer's queue, waited for outside the lock.
            let room = match (&piece, &tier) {
                (Ok(Some(p)), Some(w)) => w.reserve(p.len()).await,
                _ => None,
            };
            let mut g = sh.lock();
            let g = &mut *g;
            // What the format states about where the content ends (see `format`), for a body
            // that ends without a length: the head of the file and the bytes before the end,
            // from the cache and this download, or, for a whole body that ended before the
            // offset asked for, from the bytes it skipped (this download holds none of them).
            let (head, tail) = match &piece {
                // Only an end nothing announced needs them.
                Ok(None) if body.end() != BodyEnd::Unconfirmed => (Head::default(), Vec::new()),
                Ok(None) if body.ended_at().is_some() => {
                    let s = body.skipped();
                    (g.head(&id).or(Head::of(&s.head)), s.tail().to_vec())
                }
                Ok(None) => {
                    let s = body.skipped();
                    let mut tail = g.tail(&id, download, cs, MPEG_TAIL);
                    // Too little in memory before the end (evicted, or this body began at the
                    // end): what the body skipped ends at this request's offset, and goes
                    // in front where it reaches the bytes held.
                    let held_from = body_pos_of(g, &id, download).saturating_sub(tail.len() as u64);
                    let skipped = s.tail();
                    if tail.len() < MPEG_TAIL
                        && held_from <= at
                        && at - held_from <= skipped.len() as u64
                    {
                        let keep = skipped.len() - (at - held_from) as usize;
                        let mut both = skipped[..keep].to_vec();
                        both.extend_from_slice(&tail);
                        let extra = both.len().saturating_sub(MPEG_TAIL);
                        both.drain(..extra);
                        tail = both;
                    }
                    (g.head(&id).or(Head::of(&s.head)), tail)
                }
                _ => (Head::default(), Vec::new()),
            };
            let Some(rec) = g.recs.get_mut(&id) else {
                return;
            };
            let Some(d) = rec.downloads.iter().find(|d| d.id == download) else {
                return;
            };
            let pos = d.pos;
            let piece = match piece {
                Ok(Some(p)) => p,
                Ok(None) => match body.end() {
                    BodyEnd::Content if body.total_len().is_some_and(|t| t > pos) => {
                        // Ended before its stated length: a server that closed early.
                        break Some(MediaError::Transient(format!(
                            "recording {id}: body ended at byte {pos}"
                        )));
                    }
                    BodyEnd::Content => {
                        // The content ends here, or where the response now says it does (a
                        // whole body that ended before the offset asked for).
                        let total = body.total_len().unwrap_or(pos);
                        let end = if total < pos && total < rec.seen {
                            End::Failed(MediaError::Failed(format!(
                                "recording {id}: a response ended at byte {total}, but {} bytes were received before",
                                rec.seen
                            )))
                        } else if rec.exact_size().is_some_and(|s| s != total) {
                            End::Failed(MediaError::Failed(format!(
                                "recording {id}: a response ended at byte {total}, the length is {}",
                                rec.exact_size().unwrap_or(0)
                            )))
                        } else {
                            rec.learn(Some(total), None, None);
                            if let Some(w) = tier.as_mut() {
                                w.learn(Some(total), None);
                            }
                            End::Eof
                        };
                        if let End::Failed(e) = &end {
                            tracing::warn!("{e}");
                        }
                        g.end_download(&id, download, end, cs, budget);
                        return;
                    }
                    BodyEnd::PastEnd => {
                        rec.bound(pos);
                        if let Some(w) = tier.as_mut() {
                            w.learn(rec.exact_size(), None);
                        }
                        g.end_download(&id, download, End::Eof, cs, budget);
                        return;
                    }
                    // The connection closed with no length told: the content's end, or a drop.
                    // A second answer ending at the same byte (or a 416 there) confirms it; one
                    // that goes on shows it was a drop. One request per such end. The end is
                    // where the body stopped, which for a whole body shorter than the offset
                    // asked for is before the download's position.
                    BodyEnd::Unconfirmed => {
                        let end = body.ended_at().unwrap_or(pos);
                        if end < rec.seen {
                            break Some(MediaError::Transient(format!(
                                "recording {id}: connection closed at byte {end}, but {} bytes exist",
                                rec.seen
                            )));
                        }
                        // A WAV file states its own length: an end before it is a drop, even
                        // when every answer drops there (a proxy that cuts bodies at a fixed
                        // size would otherwise be confirmed as the end).
                        rec.head = rec.head.or(head);
                        if let Some(t) = rec.head.wav_length.filter(|t| wav_cut(*t, end)) {
                            break Some(MediaError::Transient(format!(
                                "recording {id}: connection closed at byte {end}, its WAV header says {t} bytes"
                            )));
                        }
                        // An MP3 states no length, but its frames do theirs: an end inside a
                        // frame is a cut (checked on the bytes before the end).
                        // A WAV's samples are never read as frames: by its type, or its header.
                        let wav_type = rec.head.riff
                            || rec
                                .known
                                .as_ref()
                                .and_then(|k| k.content_type.as_deref())
                                .is_some_and(|t| t.to_ascii_lowercase().contains("wav"));
                        if !wav_type && ends_inside_an_mpeg_frame(&tail) {
                            break Some(MediaError::Transient(format!(
                                "recording {id}: connection closed at byte {end}, inside an MPEG audio frame"
                            )));
                        }
                        if rec.candidate_end == Some(end) {
                            let e = match rec.check(Some(end), None, None) {
                                Ok(()) => {
                                    rec.learn(Some(end), None, None);
                                    rec.bound(end);
                                    if let Some(w) = tier.as_mut() {
                                        w.learn(rec.exact_size(), None);
                                    }
                                    End::Eof
                                }
                                Err(detail) => {
                                    let e = MediaError::Failed(format!(
                                        "recording {id}: the media host's answers disagree: {detail}"
                                    ));
                                    tracing::warn!("{e}");
                                    End::Failed(e)
                                }
                            };
                            g.end_download(&id, download, e, cs, budget);
                            return;
                        }
                        let before = rec.candidate_end.replace(end);
                        if let Some(other) = before.filter(|_| !progressed) {
                            // Two answers that closed at different bytes, neither bringing
                            // anything new: at least one of them was a drop.
                            break Some(MediaError::Transient(format!(
                                "recording {id}: connections closed at bytes {other} and {end}"
                            )));
                        }
                        tracing::debug!(recording = %id, download, end, "connection closed without a length; confirming the end");
                        confirming = true;
                        break None;
                    }
                    // A partial range that ended before its end: a drop.
                    BodyEnd::At(e) if pos < e => {
                        break Some(MediaError::Transient(format!(
                            "recording {id}: range ended at byte {pos} of {e}"
                        )));
                    }
                    // A partial range ended where it said it would: one more request goes on.
                    BodyEnd::At(_) => break None,
                },
                Err(e) => {
                    tracing::debug!(recording = %id, download, pos, error = %e, "media body broke");
                    break Some(e);
                }
            };
            let total = rec.exact_size();
            let rid = rec.id.clone();
            let d = rec
                .downloads
                .iter_mut()
                .find(|d| d.id == download)
                .expect("checked");
            if total.is_some_and(|t| d.pos + piece.len() as u64 > t) {
                let e = MediaError::Failed(format!("recording {id}: body longer than its length"));
                tracing::warn!("{e}");
                g.end_download(&id, download, End::Failed(e), cs, budget);
                return;
            }
            progressed = true;
            if let (Some(w), Some(room)) = (tier.as_mut(), room) {
                w.learn(total, None);
                w.append(d.pos, piece.clone(), room);
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
            // The first bytes of the file, once they are all in (the first piece may hold only
            // a few of them): what they say of the format is kept (`Head`).
            let first = full
                .iter()
                .find(|((_, k), _)| *k == 0)
                .map(|(_, c)| c.clone())
                .or_else(|| {
                    (d.buf_start == 0)
                        .then(|| Bytes::copy_from_slice(&d.buf[..d.buf.len().min(64)]))
                })
                .filter(|b| b.len() >= 12);
            let (pos, at_boundary) = (d.pos, d.buf.is_empty());
            rec.seen = rec.seen.max(pos);
            if let Some(f) = first {
                rec.head = rec.head.or(Head::of(&f));
            }
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
                let covered = g.recs[&id]
                    .downloads
                    .iter()
                    .any(|o| o.id != download && o.start <= pos && pos <= o.pos);
                if next_cached || covered {
                    g.end_download(&id, download, End::Merged, cs, budget);
                    return;
                }
            }
        };
        drop(body);
        at = {
            let g = sh.lock();
            let Some(d) = g
                .recs
                .get(&id)
                .and_then(|r| r.downloads.iter().find(|d| d.id == download))
            else {
                return;
            };
            d.pos
        };
        match broke {
            // The end of a partial range, or an end to confirm: not a failure; the next request
            // continues from `at`.
            None if progressed || confirming => continue,
            None => {
                let e = MediaError::Failed(format!(
                    "recording {id}: a partial response at byte {at} brought no byte"
                ));
                sh.after_failure(&id, download, e, false);
                return;
            }
            Some(e) => match sh.after_failure(&id, download, e, progressed) {
                Retry::After(pause) => tokio::time::sleep(pause).await,
                Retry::Ended => return,
            },
        }
    }
}

impl Shared {
    /// Resolves once no reader has asked for this download's bytes for `read_timeout` (every
    /// reader that waited on it has timed out or gone), or once the download is gone.
    async fn unwanted(&self, id: &Arc<str>, download: u64) {
        loop {
            let deadline = {
                let g = self.lock();
                match g
                    .recs
                    .get(id)
                    .and_then(|r| r.downloads.iter().find(|d| d.id == download))
                {
                    Some(d) => d.last_read + self.config.read_timeout,
                    None => return,
                }
            };
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// Decides, under the lock, what a download does after a request failed (`progressed`: its
    /// body brought new bytes before it broke). Ends the download when the failure is final, the
    /// budget is spent, or nobody waits for it; otherwise counts the request against the budget.
    fn after_failure(
        &self,
        id: &Arc<str>,
        download: u64,
        e: MediaError,
        progressed: bool,
    ) -> Retry {
        let cs = self.cs();
        let budget = self.config.cache_bytes;
        let mut g = self.lock();
        let Some(rec) = g.recs.get_mut(id) else {
            return Retry::Ended;
        };
        let Some(d) = rec.downloads.iter().find(|d| d.id == download) else {
            return Retry::Ended;
        };
        let wanted = d.last_read + self.config.read_timeout > Instant::now();
        let pos = d.pos;
        let end = match e {
            MediaError::Transient(cause) => {
                if progressed {
                    rec.drops += 1;
                } else {
                    rec.strikes += 1;
                }
                if rec.strikes >= MAX_STRIKES || rec.drops > MAX_DROPS {
                    let e = MediaError::Failed(format!(
                        "recording {id}: gave up at byte {pos} after {} requests without new bytes and {} drops; last: {cause}",
                        rec.strikes, rec.drops
                    ));
                    tracing::warn!("{e}");
                    End::Failed(e)
                } else if !wanted {
                    // The reader gave up (its read timed out) or went away: stop spending.
                    tracing::debug!(recording = %id, download, pos, "nobody waits; not retrying");
                    End::Idle
                } else if progressed {
                    tracing::debug!(recording = %id, download, pos, "resuming after a drop: {cause}");
                    return Retry::After(Duration::ZERO);
                } else {
                    let pause = strike_backoff(rec.strikes);
                    tracing::debug!(recording = %id, download, pos, "retrying in {pause:?}: {cause}");
                    return Retry::After(pause);
                }
            }
            // Not there (yet): the open that asked says so (EAGAIN for a listed recording).
            e @ MediaError::NotAvailable(_) => End::Failed(e),
            e @ (MediaError::Failed(_) | MediaError::TimedOut) => {
                tracing::warn!("recording {id}: {e}");
                End::Failed(e)
            }
        };
        g.end_download(id, download, end, cs, budget);
        Retry::Ended
    }
}

/// The media layer's unit tests; their small fixtures (`CS`, `key`, `cfg`) serve the tier tests too.
#[cfg(test)]
pub(crate) mod tests;

#[cfg(test)]
mod tier_tests;
