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
//! with `PRAGMA user_version` so that later tables (call-log records per date) can be added by a
//! migration.

pub mod disk;

pub use disk::{
    CompleteFile, DiskStats, DiskStore, InUse, Lease, Reserved, StoreConfig, StoredRecording,
    Summary, Writer,
};
