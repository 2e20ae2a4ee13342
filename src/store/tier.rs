//! What the media layer needs of a tier below its memory cache, whatever keeps the bytes.
//!
//! The media layer ([`crate::media`], "The tier below memory") asks a [`Tier`] only five things:
//! what it holds of a recording ([`Tier::get`]), a range of what it holds ([`Tier::read`]), to
//! keep a recording while it is open ([`Tier::lease`]), to take a download's bytes as they arrive
//! ([`Tier::writer`]), and, for a tier whose bytes are local files, a complete checked file that
//! the kernel can read directly ([`Tier::open_complete`]). It never learns how a tier keeps them:
//! the disk store ([`super::disk`]) is one tier, a shared bucket would be another.
//!
//! Every tier holds, per recording, a *prefix* of its content from byte 0 (all of it once
//! complete): the media layer reads from a tier, and resumes downloads, at the end of that
//! prefix, so a tier that holds scattered ranges would have to expose only its prefix.
//!
//! # Adding a tier
//!
//! A new tier (a team's shared bucket, say) implements [`Tier`] and [`TierWriter`] in a module
//! of its own here; a tier with no local files answers `None` to [`Tier::open_complete`]. It is
//! stacked where the media layer is built (`serve` in [`crate::cli`]), the one place that
//! chooses tiers: the media layer takes one `Arc<dyn Tier>`, so a bucket below the disk is a
//! stack, itself a [`Tier`] over an upper and a lower one (what is held is the longer prefix of
//! the two, a read goes to the one that holds it, a writer writes through to both, a lease
//! holds both). Neither the media layer nor the tiers already written change.

use std::any::Any;
use std::fs::File;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

/// What a tier holds of one recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecording {
    /// Exact total size, when a response told it.
    pub size: Option<u64>,
    pub content_type: Option<String>,
    /// Bytes held from offset 0 (readable now).
    pub stored: u64,
}

impl StoredRecording {
    /// The whole content is held.
    pub fn complete(&self) -> bool {
        self.size == Some(self.stored)
    }
}

/// Keeps a recording in the tier that handed it out (never evicted) while it lives. Opaque: each
/// tier keeps what it needs in it, and dropping it releases the recording.
pub type TierLease = Box<dyn Any + Send>;

/// Room for one piece in a tier writer's queue, from [`TierWriter::reserve`]; handed back to the
/// same writer's [`TierWriter::append`], which holds it until the piece is written. Opaque, like
/// [`TierLease`].
pub struct Reserved {
    _held: Box<dyn Any + Send>,
}

impl Reserved {
    /// Room held by `permit` (whatever the tier's queue counts with) until the piece is written.
    pub fn new(permit: impl Any + Send) -> Reserved {
        Reserved {
            _held: Box::new(permit),
        }
    }
}

/// The future of [`TierWriter::reserve`].
pub type ReserveFuture<'a> = Pin<Box<dyn Future<Output = Option<Reserved>> + Send + 'a>>;

/// Takes one download's bytes through to a tier, in order, as they arrive. Dropping it tells the
/// tier the download ended.
pub trait TierWriter: Send {
    /// Waits for room for `len` bytes: the only thing a download ever awaits of a tier, so a slow
    /// tier pushes back on the download instead of filling memory. Called outside the media
    /// layer's lock. `None`: the tier is not taking this recording (any more).
    fn reserve(&self, len: usize) -> ReserveFuture<'_>;

    /// Queues `data`, the content at `offset`; the tier keeps it only where it continues what it
    /// holds. Never blocks: called under the media layer's lock.
    fn append(&self, offset: u64, data: Bytes, room: Reserved);

    /// What the download learned of the recording (its exact size, its content type).
    fn learn(&mut self, size: Option<u64>, content_type: Option<&str>);
}

/// A tier below the media layer's memory cache. See the module docs.
///
/// [`Tier::get`], [`Tier::lease`], [`Tier::writer`] and the writer's `append` are asked under
/// the media layer's lock: they answer from memory and never block on I/O. [`Tier::read`] and
/// [`Tier::open_complete`] may block (files, the network); the media layer calls them in
/// `spawn_blocking`.
///
/// A tier is a cache, never a source of truth: what it cannot vouch for it drops (`None`), and
/// the media layer then fetches the recording as if there were no tier.
pub trait Tier: Send + Sync + 'static {
    /// What is held of `id`, answered from memory.
    fn get(&self, id: &str) -> Option<StoredRecording>;

    /// The bytes held of `[offset, offset + len)`, from `offset` up to what is held (shorter
    /// past that); `None` when nothing is held at `offset`, or what is held proved damaged.
    /// Blocking.
    fn read(&self, id: &str, offset: u64, len: usize) -> Option<Bytes>;

    /// Keeps `id` from eviction until the lease is dropped (while a reader has it open).
    fn lease(&self, id: &str) -> TierLease;

    /// A writer for one download of `id`; it keeps `id` from eviction while it lives.
    fn writer(self: Arc<Self>, id: &str) -> Box<dyn TierWriter>;

    /// A local file of `id`'s whole content, checked, for the kernel to read directly
    /// (passthrough). `None` when the tier holds less, or keeps no local files (a bucket).
    /// Blocking.
    fn open_complete(&self, id: &str) -> Option<CompleteFile>;
}

/// A recording a tier holds complete, its content checked, open read-only: what a kernel
/// passthrough reads from ([`Tier::open_complete`]). Its lease keeps the tier from evicting it
/// while it lives.
pub struct CompleteFile {
    pub file: File,
    /// The content's size (the file's length).
    pub size: u64,
    _lease: TierLease,
}

impl CompleteFile {
    /// `file`, of `size` bytes, kept by `lease` while the file lives.
    pub fn new(file: File, size: u64, lease: TierLease) -> CompleteFile {
        CompleteFile {
            file,
            size,
            _lease: lease,
        }
    }
}

impl std::fmt::Debug for CompleteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompleteFile")
            .field("file", &self.file)
            .field("size", &self.size)
            .finish()
    }
}
