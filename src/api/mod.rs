//! The RingCentral client: auth, call log, recording media, and the request budget.
//!
//! This is the only code that talks to RingCentral and the only place that spends requests
//! (see `shared/ringcentral-api.md` for the contract it follows). It names no FUSE type.
//!
//! - [`credentials`]: `RC_*` / `RINGCENTRAL_*` settings from the environment or a private file.
//! - `auth`: token answers, renewal timing, the 0600 state file that keeps tokens across
//!   restarts.
//! - `pacer`: one pacer per rate group, shared by all clones of the [`Client`]; priority queue,
//!   limits learned from `X-Rate-Limit-*`, holds after 429 (the algorithm is described there).
//! - `client`: [`Client`], the single request path (pacer -> token -> send -> retry policy).
//! - `records`: lenient parsing of call-log records and recording metadata.
//! - `media`: [`MediaStream`], a resumable streaming download.
//! - `error`: [`ApiError`].

mod auth;
mod client;
pub mod credentials;
mod error;
mod media;
pub mod pacer;
mod records;

pub use client::{Client, ClientConfig, ClientStats};
pub use credentials::Credentials;
pub use error::ApiError;
pub use media::{BodyEnd, MediaStream};
pub use records::{CallRecord, Party, RecordingMeta, RecordingRef};

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
