//! Whether the API answers, and starting a mount that may have to do without it.
//!
//! When RingCentral cannot be reached (a transport error or a timeout after the client's own
//! retries), letting every operation wait out `read_timeout` would make the mount useless even
//! for what it already knows. So the core remembers that the API is down: what needs the API
//! fails at once with EIO ([`FsError::Offline`]; for recordings, the media layer's offline mode:
//! bytes kept in memory or on disk are read, the rest fails), dates listed before list from the
//! index, and
//! a background probe (one call-log query of a one-minute span, first after 1 s, then doubling
//! to 60 s) finds out when the API answers again; the mount then recovers without a remount.
//!
//! [`Fs::start`] is how a mount begins, for the CLI and the tests alike: with nothing in the
//! call index to serve from, a failed login is fatal, as it always was; with an index, a login
//! or first request that cannot reach the API within a few seconds starts the mount offline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;

use super::{Fs, FsError};
use crate::api::{ApiError, Priority, Scope};

/// The first probe's delay after the API was found down; doubled after each failed probe...
const PROBE_FIRST: Duration = Duration::from_secs(1);
/// ...up to this.
const PROBE_MAX: Duration = Duration::from_secs(60);
/// A probe with no answer within this long failed (a hung API).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a mount with a call index waits for the API when it starts before it serves
/// offline (capped by `read_timeout`).
const START_PATIENCE: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub(super) struct Reach {
    down: AtomicBool,
    probing: AtomicBool,
}

/// The client could not talk to the service at all (as opposed to the service saying no).
fn unreachable(e: &ApiError) -> bool {
    matches!(e, ApiError::Transport { .. } | ApiError::Timeout { .. })
}

impl Fs {
    /// Whether the API is known to be down (a probe is then running).
    pub(super) fn api_down(&self) -> bool {
        self.reach.down.load(Ordering::Acquire)
    }

    /// A failed API request: logged (see [`FsError::api`]), and taken for the API being down
    /// when the client could not reach it.
    pub(super) fn api_error(&self, what: String, e: ApiError) -> FsError {
        if unreachable(&e) {
            self.mark_down(&crate::api::chain(&e));
        }
        FsError::api(what, e)
    }

    fn mark_down(&self, why: &str) {
        // Recordings too: what is kept is served, the rest fails at once.
        self.media.set_offline(true);
        if !self.reach.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                "the API is unreachable ({why}); serving what the mount knows, and failing what \
                 needs the API at once, until it answers again"
            );
        }
        if self.reach.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.reach.probing.store(false, Ordering::Release);
            return;
        };
        let (log, reach, media) = (self.log.clone(), self.reach.clone(), self.media.clone());
        let scope = self.state().scope.unwrap_or(Scope::Account);
        rt.spawn(async move {
            let mut delay = PROBE_FIRST;
            loop {
                tokio::time::sleep(delay).await;
                if Arc::strong_count(&reach) == 1 {
                    return; // the core is gone
                }
                let now = Timestamp::now();
                let from = now - jiff::SignedDuration::from_secs(60);
                let probe = log.page(scope, from, now, None, Priority::Background);
                let answered = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => !unreachable(&e),
                    Err(_) => false,
                };
                if answered {
                    tracing::info!("the API answers again");
                    reach.down.store(false, Ordering::Release);
                    media.set_offline(false);
                    reach.probing.store(false, Ordering::Release);
                    return;
                }
                tracing::debug!("the API is still unreachable; next probe in {delay:?}");
                delay = (delay * 2).min(PROBE_MAX);
            }
        });
    }

    /// Starts the mount: `login` (the client's), then, with a call index, the catch-up of the
    /// dates that may have changed since the last mount. Without a call index to serve from, a
    /// failed login is returned (the mount does not start); with one, an API that cannot be
    /// reached starts the mount offline (see the module docs) and only a refusal (bad
    /// credentials) is returned.
    pub async fn start(
        &self,
        login: impl std::future::Future<Output = Result<(), ApiError>>,
    ) -> Result<(), ApiError> {
        let held = self.meta.is_some() && !self.state().coverage.is_empty();
        if !held {
            return login.await;
        }
        enum Failed {
            Login(ApiError),
            Listing(FsError),
        }
        let now = Timestamp::now();
        let (_, last) = self.config.window.bounds(now);
        let catch_up = self.is_recent(last, now) && self.catch_up_covers(&self.state(), last, now);
        let check = async {
            login.await.map_err(Failed::Login)?;
            if catch_up {
                self.ensure_date(last).await.map_err(Failed::Listing)?;
            }
            Ok(())
        };
        let patience = self.config.read_timeout.min(START_PATIENCE);
        let why = match tokio::time::timeout(patience, check).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(Failed::Login(e))) if !unreachable(&e) => return Err(e),
            Ok(Err(Failed::Login(e))) => crate::api::chain(&e),
            Ok(Err(Failed::Listing(e))) if !self.api_down() => {
                // The service answered, with an error: the date is listed again on demand.
                tracing::warn!("bringing {last} up to date: {e}");
                return Ok(());
            }
            Ok(Err(Failed::Listing(e))) => e.to_string(),
            Err(_) => format!("no answer within {patience:?}"),
        };
        let calls = self.state().index.sessions.len();
        tracing::warn!(
            "RingCentral is unreachable ({why}): mounting offline with the {calls} call sessions \
             the cache directory holds"
        );
        self.mark_down(&why);
        Ok(())
    }
}
