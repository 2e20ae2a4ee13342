//! ringfs: a RingCentral account's call recordings as a read-only FUSE filesystem.
//!
//! # Layout
//!
//! The modules are layered: each one uses only modules below it, and [`model`] uses none.
//!
//! ```text
//! cli ──> control, manual, scrape, source, fuse, fs, media, store, catalog, api, emulator
//! control ──> status, fs            (the mount's Unix socket)
//! status ──> fs, media, store, api   (what `ringfs status` shows; no request)
//! source ──> fs, media, api          (binds the client to the core's traits)
//! shared ──> fs, media, store, catalog, api, model   (a team's bucket)
//! fuse ──> fs
//! fs ──> catalog, media, store, api, model
//! media ──> store, api               (the Tier trait; Priority, BodyEnd)
//! store                              (no ringfs module; its tests run the disk under media)
//! catalog ──> model
//! api ──> model
//! scrape ──> api, media, store, metrics   (the /metrics endpoint)
//! model, metrics                     (no ringfs module; api and media write to metrics)
//! emulator                           (no ringfs module; the tests' RingCentral)
//! ```
//!
//! - [`cli`]: command line and `-o` options -> one validated configuration; mounting and the
//!   parent/child readiness handshake.
//! - [`control`]: the mount's control socket: `ringfs watch` and the status.
//! - [`manual`]: the man page and shell completions, from the clap definitions of [`cli`].
//! - [`metrics`]: request outcomes, bytes and latency histograms, written by api and media;
//!   [`scrape`]: the `--metrics` endpoint that reads them and the layers' counters.
//! - [`status`]: what `ringfs status` shows, gathered from the pacer, media layer, disk store
//!   and core without a request; the estimate of when queued downloads are done.
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
//! - [`api`]: the RingCentral client. Auth, call log, recording media, live events (WebSocket),
//!   and the request budget (one pacer per rate group). It is the only code that sends
//!   requests, and names no FUSE type.
//! - [`model`]: the domain types: call records, parties, recordings, and the `RecordingId` and
//!   `SessionId` newtypes.
//! - [`emulator`]: an in-process RingCentral API emulator (API host + media host), used by the
//!   tests, the benchmarks, `ringfs demo` and the `ringfs-emulator` binary.

pub mod api;
pub mod catalog;
pub mod cli;
pub mod control;
pub mod emulator;
pub mod fs;
pub mod fuse;
pub mod manual;
pub mod media;
pub mod metrics;
pub mod model;
pub mod scrape;
pub mod shared;
pub mod source;
pub mod status;
pub mod store;
