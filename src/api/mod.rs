//! The RingCentral client: auth, call log, recording media, and the request budget.
//!
//! This is the only code that talks to RingCentral and the only place that spends requests. It
//! follows RingCentral's published API (OAuth JWT grant, call log, recording content, rate
//! groups); where the service's behaviour is undocumented it accepts every answer a server may
//! give (see `media`). It names no FUSE type. The
//! records it returns are [`crate::model`] types, re-exported here for callers of the client.
//!
//! The modules, each using only those listed after it:
//! - `client`: [`Client`], the cheap-to-clone facade callers hold; it forwards to the modules
//!   below and holds no logic of its own.
//! - `call_log`: the call-log endpoints: one query builder, one `nextPage` follower that keeps
//!   the bearer token on the API host, lenient page parsing.
//! - `recordings`: recording metadata, the media host (configured, learned or derived) and
//!   the "manual" content URL, opening a recording's content.
//! - `media`: [`MediaStream`], one media response read exactly as the server sent it.
//! - [`events`]: live telephony events over the WebSocket notifications: `wstoken`, the
//!   protocol state machine, the supervisor task ([`spawn_events`]) that yields
//!   [`LiveNotice`]s.
//! - `transport`: the single request path (pacer permit -> bearer token -> send -> retry
//!   policy -> body reading with the stall timeout) and the counters.
//! - `auth`: token answers, renewal timing, the 0600 state file that keeps tokens across
//!   restarts.
//! - `pacer`: one pacer per rate group, shared by all clones of the [`Client`]; priority queue,
//!   limits learned from `X-Rate-Limit-*`, holds after 429 (the algorithm is described there).
//! - [`credentials`]: `RC_*` / `RINGCENTRAL_*` settings from the environment or a private file.
//! - `error`: [`ApiError`].

mod auth;
mod call_log;
mod client;
pub mod credentials;
mod error;
pub mod events;
mod media;
pub mod pacer;
mod recordings;
mod transport;

pub use crate::model::{CallRecord, LiveNotice, Party, RecordingMeta, RecordingRef, SessionEvent};
pub use client::{Client, ClientConfig};
pub use credentials::Credentials;
pub use error::{ApiError, chain};
pub use events::{EventsConfig, WsToken, event_filter, spawn_events};
pub use media::{BodyEnd, MediaStream, SKIPPED_HEAD, SKIPPED_TAIL, Skipped};
pub use transport::ClientStats;

/// A `reqwest` client builder with TLS ready: rustls with the *ring* crypto provider.
///
/// reqwest's own `rustls` feature brings aws-lc-rs, whose C build (cmake-style, hundreds of
/// files) took most of a clean CI build on this 2-core machine; ring does the same job for a
/// client and builds in seconds. With `rustls-no-provider` reqwest panics unless a process-wide
/// provider is installed, so every client in the crate (and the tests' own) is built from here.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    // Err means a provider is already installed (ours, or the embedding program's): keep it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// Who is waiting for a request. A person waiting on `ls` or a player goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// A person is waiting (a `readdir`, a `read` a player is blocked on).
    Interactive,
    /// Nobody is waiting (read-ahead, indexing).
    Background,
}

/// Which call log to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The whole company (`/account/~/call-log`; needs an admin user).
    Account,
    /// The authorized user (`/account/~/extension/~/call-log`).
    Extension,
}

impl Scope {
    /// `account` or `extension`.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Account => "account",
            Scope::Extension => "extension",
        }
    }
}
