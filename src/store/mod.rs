//! What a mount fetched, kept on disk so that it outlives the mount.
//!
//! Requests to RingCentral are the scarce resource (about ten call-log pages and recording
//! downloads a minute together), and recordings never change once made. A recording fetched by
//! one mount is therefore worth keeping for the next one: [`disk::DiskStore`] holds recording
//! content by recording id under a cache directory, below the media layer's memory LRU (see
//! "The disk tier" in [`crate::media`]).
//!
//! The store is a cache, never a source of truth: whatever it cannot vouch for (a file shorter
//! than its index says, a checksum that differs, a write that failed) is dropped and fetched
//! again, and a reader never sees an error because of the disk. Its index is SQLite, versioned
//! with `PRAGMA user_version`; the same database holds [`meta::MetaStore`], the call index (what
//! the call log returned and which spans of time were listed), so that a remount lists past
//! dates without a request.

pub mod disk;
pub mod meta;

pub use disk::{
    CompleteFile, DiskStats, DiskStore, InUse, Lease, Reserved, StoreConfig, StoredRecording,
    Summary, Writer,
};
pub use meta::{MetaStore, Span, Stored, StoredCall};
