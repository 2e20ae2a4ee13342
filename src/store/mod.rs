//! What a mount fetched, kept below the media layer's memory so that it outlives the mount.
//!
//! Requests to RingCentral are the scarce resource (about ten call-log pages and recording
//! downloads a minute together), and recordings never change once made. A recording fetched by
//! one mount is therefore worth keeping for the next one. The media layer keeps recording
//! content in a [`Tier`] below its memory LRU, and knows no other type of this module's: the
//! trait ([`tier`]) is the one seam between them. [`disk::DiskStore`] is the tier there is today:
//! recording content by recording id under a cache directory (see "The tier below memory" in
//! [`crate::media`]).
//!
//! # Adding a tier
//!
//! A new tier (a team's shared bucket below the disk, say) is a new module here implementing
//! [`Tier`] and [`TierWriter`]; it is stacked in `serve` ([`crate::cli`]), the one place that
//! builds the media layer, by handing the media layer a tier that combines it with the disk (see
//! "Adding a tier" in [`tier`]). The media layer and the disk tier do not change. [`stack::Stack`]
//! is that combination; the team's bucket ([`crate::shared`]) is the tier it stacks below the
//! disk.
//!
//! A tier is a cache, never a source of truth: whatever it cannot vouch for (a file shorter
//! than its index says, a checksum that differs, a write that failed) is dropped and fetched
//! again, and a reader never sees an error because of a tier. The disk store's index is SQLite,
//! versioned with `PRAGMA user_version`; the same database holds [`meta::MetaStore`], the call
//! index (what the call log returned and which spans of time were listed), so that a remount
//! lists past dates without a request.

pub mod disk;
pub mod meta;
pub mod stack;
pub mod tier;

pub use disk::{DiskStats, DiskStore, InUse, Lease, StoreConfig, Summary, Writer};
pub use meta::{MetaStore, Span, Stored, StoredCall};
pub use stack::Stack;
pub use tier::{CompleteFile, Reserved, StoredRecording, Tier, TierLease, TierWriter};
