//! [`Client`]: the RingCentral client as its callers see it, a cheap-to-clone facade over the
//! request path ([`super::transport`]) and the endpoints ([`super::call_log`],
//! [`super::recordings`]).
//!
//! It holds no logic of its own: it validates the configuration, splits it between the transport
//! and the media host, and forwards each call. How requests are paced, authenticated and retried
//! is described in `transport`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::credentials::Credentials;
use super::error::ApiError;
use super::events::{self, WsToken};
use super::media::MediaStream;
use super::recordings::{self, MediaHost};
use super::transport::{ClientStats, Transport, TransportConfig};
use super::{Priority, Scope, call_log};
use crate::model::{CallLogPage, CallRecord, RecordingMeta};

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// App credentials and JWT.
    pub credentials: Credentials,
    /// Where tokens are kept across restarts (mode 0600). `None`: memory only.
    pub state_file: Option<PathBuf>,
    /// Media host base URL for [`Client::recording_content_url`]. `None`: learned from the
    /// `contentUri`s seen, else derived from the API host (`platform.X` -> `media.X`).
    pub media_base: Option<String>,
    /// Limit on establishing a connection.
    pub connect_timeout: Duration,
    /// Limit on waiting for response headers and for each body chunk.
    pub stall_timeout: Duration,
    /// Retries per API request before giving up (media requests are bounded by the media layer).
    pub max_retries: u32,
    /// First backoff delay for 5xx and transport errors; doubles per retry.
    pub backoff_base: Duration,
    /// Cap on the backoff delay.
    pub backoff_max: Duration,
}

impl ClientConfig {
    /// Defaults: no state file, 10 s connect, 30 s stall, 5 retries, backoff 500 ms .. 30 s.
    pub fn new(credentials: Credentials) -> Self {
        ClientConfig {
            credentials,
            state_file: None,
            media_base: None,
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            max_retries: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// The RingCentral client. Cheap to clone; clones share tokens, pacers, counters and what was
/// learned about the media host.
#[derive(Clone)]
pub struct Client {
    transport: Transport,
    media: Arc<MediaHost>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server_url", &self.transport.server())
            .field("client_id", &self.transport.client_id())
            .field("media", &self.media)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Builds the client. Sends nothing.
    pub fn new(config: ClientConfig) -> Result<Client, ApiError> {
        url::Url::parse(&config.credentials.server_url)
            .map_err(|e| ApiError::Config(format!("server URL: {e}")))?;
        if let Some(m) = &config.media_base {
            url::Url::parse(m).map_err(|e| ApiError::Config(format!("media base URL: {e}")))?;
        }
        let ClientConfig {
            credentials,
            state_file,
            media_base,
            connect_timeout,
            stall_timeout,
            max_retries,
            backoff_base,
            backoff_max,
        } = config;
        let media = MediaHost::new(credentials.server_url.clone(), media_base);
        let transport = Transport::new(TransportConfig {
            credentials,
            state_file,
            connect_timeout,
            stall_timeout,
            max_retries,
            backoff_base,
            backoff_max,
        })?;
        Ok(Client {
            transport,
            media: Arc::new(media),
        })
    }

    /// Makes sure there is a usable access token: the stored one if still fresh (no request),
    /// else a refresh or a JWT login.
    pub async fn login(&self) -> Result<(), ApiError> {
        self.transport.login(Priority::Interactive).await
    }

    /// Revokes the current session's access token (best effort) and forgets the stored tokens.
    pub async fn logout(&self) -> Result<(), ApiError> {
        self.transport.logout().await
    }

    /// Every call-log record with a recording in `[from, to)`, all pages.
    pub async fn list_recorded(
        &self,
        scope: Scope,
        from: jiff::Timestamp,
        to: jiff::Timestamp,
        prio: Priority,
    ) -> Result<Vec<CallRecord>, ApiError> {
        call_log::recorded(&self.transport, &self.media, scope, from, to, prio).await
    }

    /// One page of the recorded-calls query for `[from, to)` (`perPage=1000`). With `next` (the
    /// `navigation.nextPage` URI an earlier page returned) it continues that query instead. Returns
    /// the records and the next page's URI, if any. The filesystem lists page by page so that it
    /// can stop as soon as the date it was asked for is covered.
    pub async fn call_log_page(
        &self,
        scope: Scope,
        from: jiff::Timestamp,
        to: jiff::Timestamp,
        next: Option<&str>,
        prio: Priority,
    ) -> Result<CallLogPage, ApiError> {
        call_log::recorded_page(&self.transport, &self.media, scope, from, to, next, prio).await
    }

    /// The records of one call session (`sessionId`), searching from `date_from` until now.
    pub async fn find_session(
        &self,
        scope: Scope,
        session_id: &str,
        date_from: jiff::Timestamp,
        prio: Priority,
    ) -> Result<Vec<CallRecord>, ApiError> {
        call_log::session(
            &self.transport,
            &self.media,
            scope,
            session_id,
            date_from,
            prio,
        )
        .await
    }

    /// `GET /restapi/v1.0/account/~/recording/{id}`.
    pub async fn recording_meta(
        &self,
        recording_id: &str,
        prio: Priority,
    ) -> Result<RecordingMeta, ApiError> {
        recordings::meta(&self.transport, &self.media, recording_id, prio).await
    }

    /// The "manual" content URL `{media}/restapi/v1.0/account/~/recording/{id}/content`, when a
    /// media base is configured, learned, or derivable (`platform.X` -> `media.X`).
    pub fn recording_content_url(&self, recording_id: &str) -> Option<String> {
        self.media.content_url(recording_id)
    }

    /// Starts streaming `content_uri` from byte `offset`.
    pub async fn open_media(
        &self,
        content_uri: &str,
        offset: u64,
        prio: Priority,
    ) -> Result<MediaStream, ApiError> {
        recordings::open_media(&self.transport, content_uri, offset, prio).await
    }

    /// `POST /restapi/oauth/wstoken`: a token and URL for one WebSocket connection (Auth rate
    /// group, through the pacer). A 403 (a missing permission) is an
    /// [`ApiError::Service`] that [`events::is_unavailable`] recognises.
    pub async fn ws_token(&self) -> Result<WsToken, ApiError> {
        events::ws_token(&self.transport).await
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ClientStats {
        self.transport.stats()
    }

    /// What every rate group's pacer holds now: counts, holds, waiters (no request).
    pub fn rate_snapshot(&self) -> Vec<super::pacer::GroupSnapshot> {
        self.transport.rate_snapshot()
    }

    /// The API server's base URL.
    pub fn server_url(&self) -> &str {
        self.transport.server()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClientConfig {
        ClientConfig::new(Credentials {
            server_url: "http://127.0.0.1:1".into(),
            client_id: "id".into(),
            client_secret: "secret-s3cr3t".into(),
            jwt: "jwt-j3wt".into(),
        })
    }

    #[test]
    fn debug_shows_no_secrets() {
        let cfg = config();
        let c = Client::new(cfg.clone()).unwrap();
        let d = format!("{c:?} {cfg:?}");
        assert!(!d.contains("s3cr3t") && !d.contains("j3wt"), "{d}");
    }

    #[test]
    fn bad_urls_are_refused() {
        let mut cfg = config();
        cfg.credentials.server_url = "not a url".into();
        assert!(matches!(Client::new(cfg), Err(ApiError::Config(_))));
        let mut cfg = config();
        cfg.media_base = Some("::".into());
        assert!(matches!(Client::new(cfg), Err(ApiError::Config(_))));
    }

    #[test]
    fn client_is_send_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Client>();
    }
}
