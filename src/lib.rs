//! ringfs: a RingCentral account's call recordings as a read-only FUSE filesystem.
//!
//! # Layout
//!
//! The modules are layered: each one uses only modules below it, and [`model`] uses none.
//!
//! ```text
//! cli ──> source, fuse, fs, media, store, catalog, api, emulator
//! source ──> fs, media, api          (binds the client to the core's traits)
//! shared ──> fs, media, store, catalog, api, model   (a team's bucket)
//! fuse ──> fs
//! fs ──> catalog, media, store, api, model
//! media ──> store, api               (the Tier trait; Priority, BodyEnd)
//! store                              (no ringfs module; its tests run the disk under media)
//! catalog ──> model
//! api ──> model
//! model                              (no ringfs module)
//! emulator                           (no ringfs module; the tests' RingCentral)
//! ```
//!
//! - [`cli`]: command line and `-o` options -> one validated configuration; mounting and the
//!   parent/child readiness handshake.
//! - [`source`]: binds the client to the traits of the core and the media layer.
//! - [`shared`]: a team's mounts sharing one fetch per recording through an S3-compatible
//!   bucket: the bucket tier, and a reader's call log and media from the bucket.
//! - [`fuse`]: the thin `fuser` adapter; the only module that names `fuser`.
//! - [`fs`]: the filesystem core: `lookup`/`getattr`/`readdir`/`open`/`read` returning plain
//!   `Result<_, FsError>`; testable without a kernel.
//! - [`media`]: lazy opening of recordings, one shared streaming download per recording, and the
//!   byte-budgeted LRU chunk cache.
//! - [`store`]: what a mount fetched, kept for the next one: the tiers below the media layer's
//!   memory cache, behind one trait ([`store::Tier`]; today the disk store, recording content
//!   under a cache directory with an SQLite index); and the call index (call-log records, the
//!   spans listed), so a remount lists past dates for free.
//! - [`catalog`]: pure naming: call-log records -> dates, session directories, file names.
//! - [`api`]: the RingCentral client. Auth, call log, recording media, and the request budget
//!   (one pacer per rate group). It is the only code that sends requests, and names no FUSE type.
//! - [`model`]: the domain types: call records, parties, recordings, and the `RecordingId` and
//!   `SessionId` newtypes.
//! - [`emulator`]: an in-process RingCentral API emulator (API host + media host), used by the
//!   tests, the benchmarks, `ringfs demo` and the `ringfs-emulator` binary.

pub mod api;
pub mod catalog;
pub mod cli;
pub mod emulator;
pub mod fs;
pub mod fuse;
pub mod media;
pub mod model;
pub mod shared;
pub mod source;
pub mod store;
