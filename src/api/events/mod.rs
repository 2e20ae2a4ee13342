//! Live telephony events over RingCentral's WebSocket notifications: the `wstoken` endpoint and
//! the supervisor task that keeps one subscription alive and turns it into [`LiveNotice`]s.
//!
//! The protocol rules live in [`protocol`] (pure, unit-tested); this module does the I/O:
//! 1. `POST /restapi/oauth/wstoken` ([`Client::ws_token`]) through the transport, so it is
//!    paced in the Auth group (5 a minute, shared with logins and refreshes) like every other
//!    request, and counted;
//! 2. connect to `uri?access_token=...` (plus `&wsc=...` when recovering), with rustls on the
//!    ring provider and the platform's roots, the same TLS setup as reqwest's;
//! 3. feed every frame and every deadline to the protocol; send what it says, forward its
//!    notices, and reconnect or stop when it says so;
//! 4. between connections, back off exponentially (`backoff_min` doubling up to
//!    `backoff_max`), except after an expected close (idle, age), which reconnects at once.
//!    The backoff is reset only by a connection that stayed live for `backoff_max`, so a server
//!    that accepts and drops at once is not hammered.
//!
//! **One `wstoken` per connection.** The guide calls the token single-use and short (30 s);
//! RingCentral's own SDK reuses one until 80 % of `expires_in`. A reused token that the server
//! refuses costs a failed connection *and* a new token, while connections are rare (one a
//! day, plus one per outage): a fresh token each time is the choice that cannot fail that way,
//! for one Auth request per connection. The Auth pacer bounds even a reconnect storm to the
//! group's limit.
//!
//! What the consumer sees: `Live { gap: true }` after each new subscription (the first, and
//! after a failed recovery), `Live { gap: false }` after a successful recovery, `Down` once
//! when a live connection is lost, `Event`s in between, and `Unavailable(reason)` (then the
//! task ends) when the app may not subscribe (403 on `wstoken`, a refused subscription or
//! connection naming a permission). The task ends quietly when the receiver is dropped.

pub mod protocol;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::error::ApiError;
use super::pacer::RateGroup;
use super::transport::{AuthKind, Req, Transport};
use super::{Client, Priority, Scope};
use crate::model::LiveNotice;
use protocol::{Output, Protocol, Timing};

/// The answer of `POST /restapi/oauth/wstoken`.
#[derive(Clone, PartialEq, Eq)]
pub struct WsToken {
    /// The token to connect with (`?access_token=`). A secret: never logged.
    pub ws_access_token: String,
    /// The WebSocket server (`wss://...`).
    pub uri: String,
    /// Seconds the token is valid for connecting.
    pub expires_in: u64,
}

impl std::fmt::Debug for WsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsToken")
            .field("uri", &self.uri)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Settings of the event feed. Every duration can be set short in tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventsConfig {
    /// Send a heartbeat after this long without traffic (30 s, the guide's value).
    pub heartbeat: Duration,
    /// A heartbeat unanswered for this long means the connection is dead (15 s).
    pub heartbeat_timeout: Duration,
    /// Limit on connecting, on waiting for `ConnectionDetails`, and on the subscription's
    /// answer (15 s).
    pub handshake_timeout: Duration,
    /// First delay before reconnecting after a failure (1 s); doubles per failure.
    pub backoff_min: Duration,
    /// Cap on that delay (60 s).
    pub backoff_max: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            heartbeat: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(15),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// The telephony-session event filter of a scope.
pub fn event_filter(scope: Scope) -> &'static str {
    match scope {
        Scope::Account => "/restapi/v1.0/account/~/telephony/sessions",
        Scope::Extension => "/restapi/v1.0/account/~/extension/~/telephony/sessions",
    }
}

/// Whether a `wstoken` (or other) error means the app may not use WebSocket notifications,
/// as opposed to a passing fault worth retrying.
pub fn is_unavailable(e: &ApiError) -> bool {
    e.is_service()
        && !e.is_transient()
        && protocol::is_permission_error(e.status().map(u64::from), e.error_code(), &e.to_string())
}

/// `POST /restapi/oauth/wstoken` with the bearer token, in the Auth group.
pub(crate) async fn ws_token(transport: &Transport) -> Result<WsToken, ApiError> {
    let req = Req {
        method: Method::POST,
        url: format!("{}/restapi/oauth/wstoken", transport.server()),
        query: Vec::new(),
        form: Vec::new(),
        auth: AuthKind::Bearer,
        group: RateGroup::Auth,
        range_from: None,
        passthrough: &[],
        retry_transient: true,
        context: "POST wstoken".into(),
    };
    let v = transport.get_json(&req, Priority::Background).await?;
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).filter(|s| !s.is_empty());
    let decode = |detail: &str| ApiError::Decode {
        context: req.context.clone(),
        detail: detail.into(),
    };
    let token = text("ws_access_token").ok_or_else(|| decode("missing ws_access_token"))?;
    let uri = text("uri").ok_or_else(|| decode("missing uri"))?;
    url::Url::parse(uri).map_err(|e| decode(&format!("bad uri: {e}")))?;
    Ok(WsToken {
        ws_access_token: token.to_owned(),
        uri: uri.to_owned(),
        expires_in: v
            .get("expires_in")
            .and_then(|x| x.as_u64().or_else(|| x.as_str()?.parse().ok()))
            .unwrap_or(30),
    })
}

/// Starts the event feed of `scope`: it subscribes, reconnects and recovers until the app may
/// not subscribe (after sending [`LiveNotice::Unavailable`]) or `tx`'s receiver is dropped.
pub fn spawn_events(
    client: Client,
    scope: Scope,
    config: EventsConfig,
    tx: mpsc::Sender<LiveNotice>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(client, scope, config, tx))
}

/// How one connection ended.
enum Ended {
    /// Connect again; `immediate`: without the backoff.
    Again { immediate: bool },
    /// Stop the feed.
    Stop,
}

async fn run(client: Client, scope: Scope, config: EventsConfig, tx: mpsc::Sender<LiveNotice>) {
    let timing = Timing {
        heartbeat: config.heartbeat,
        heartbeat_timeout: config.heartbeat_timeout,
        handshake_timeout: config.handshake_timeout,
    };
    let mut proto = Protocol::new(event_filter(scope), timing);
    let mut failures: u32 = 0;
    loop {
        if tx.is_closed() {
            return;
        }
        let mut live_since = None;
        let ended = connection(&client, &mut proto, &config, &tx, &mut live_since).await;
        if matches!(ended, Ended::Stop) {
            return;
        }
        for o in proto.closed(Instant::now()) {
            if let Output::Notice(n) = o {
                if n == LiveNotice::Down {
                    tracing::info!("event connection lost; reconnecting");
                }
                if tx.send(n).await.is_err() {
                    return;
                }
            }
        }
        let Ended::Again { immediate } = ended else {
            return;
        };
        if live_since.is_some_and(|t: Instant| t.elapsed() >= config.backoff_max) {
            failures = 0;
        }
        let delay = if immediate && failures == 0 {
            Duration::ZERO
        } else {
            config
                .backoff_min
                .saturating_mul(1u32 << failures.min(20))
                .min(config.backoff_max)
        };
        failures = failures.saturating_add(1);
        tracing::debug!("events: reconnecting in {delay:?}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Hands a notice to the consumer; false when it is gone. Says why once at `warn` when events
/// are unavailable, since that is something a user can act on.
async fn notify(tx: &mpsc::Sender<LiveNotice>, n: LiveNotice) -> bool {
    if let LiveNotice::Unavailable(why) = &n {
        tracing::warn!(
            "live call events are unavailable: {why}; the mount falls back to polling the call log"
        );
    }
    tx.send(n).await.is_ok()
}

/// The consumer is gone: deletes the subscription (best effort, one message) and closes the
/// connection, so that the service does not keep a subscription nobody reads until it expires.
/// A subscription asked for and not yet answered would be created all the same: its answer
/// (which names it) is awaited for up to `wait` first, so that it is deleted too.
async fn goodbye<S, R>(proto: &mut Protocol, sink: &mut S, stream: &mut R, wait: Duration)
where
    S: futures_util::Sink<Message> + Unpin,
    R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    if proto.subscribing() {
        let answer = async {
            while proto.subscribing() {
                match stream.next().await {
                    // What it says is for a consumer that is gone: only the subscription's id
                    // matters now, or that there will be none (refused, or the connection ends).
                    Some(Ok(Message::Text(t))) => {
                        let outputs = proto.on_text(t.as_str(), Instant::now());
                        if outputs
                            .iter()
                            .any(|o| matches!(o, Output::Stop | Output::Reconnect { .. }))
                        {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        };
        let _ = tokio::time::timeout(wait, answer).await;
    }
    if let Some(bye) = proto.goodbye() {
        tracing::debug!("events: deleting the subscription");
        let _ = sink.send(Message::text(bye)).await;
    }
    let _ = sink.close().await;
}

/// One connection, from its `wstoken` to its end. `live_since` is set when it goes live.
async fn connection(
    client: &Client,
    proto: &mut Protocol,
    config: &EventsConfig,
    tx: &mpsc::Sender<LiveNotice>,
    live_since: &mut Option<Instant>,
) -> Ended {
    let again = Ended::Again { immediate: false };
    let token = match client.ws_token().await {
        Ok(t) => t,
        Err(e) if is_unavailable(&e) => {
            let why = format!(
                "the app may not open WebSocket notifications ({}); it needs the WebSocket \
                 Subscriptions permission",
                super::chain(&e)
            );
            notify(tx, LiveNotice::Unavailable(why)).await;
            return Ended::Stop;
        }
        Err(e) => {
            tracing::debug!("events: no WebSocket token: {}", super::chain(&e));
            return again;
        }
    };
    let wsc = proto.begin(Instant::now());
    let Ok(mut url) = url::Url::parse(&token.uri) else {
        return again;
    };
    url.query_pairs_mut()
        .append_pair("access_token", &token.ws_access_token);
    if let Some(w) = &wsc {
        url.query_pairs_mut().append_pair("wsc", w);
    }
    let connector = (url.scheme() == "wss").then(tls_connector).flatten();
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(url.as_str(), None, false, connector);
    let ws = match tokio::time::timeout(config.handshake_timeout, connecting).await {
        Ok(Ok((ws, _))) => ws,
        // The error names no URL, so it carries no token.
        Ok(Err(e)) => {
            tracing::debug!("events: cannot connect: {e}");
            return again;
        }
        Err(_) => {
            tracing::debug!("events: connecting timed out");
            return again;
        }
    };
    tracing::debug!(recovering = wsc.is_some(), "events: connected");
    proto.opened(Instant::now());
    let (mut sink, mut stream) = ws.split();
    loop {
        let deadline = proto
            .deadline()
            .unwrap_or_else(|| Instant::now() + config.heartbeat);
        let outputs = tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => proto.on_text(t.as_str(), Instant::now()),
                Some(Ok(Message::Close(_))) | None => return again,
                Some(Ok(_)) => { proto.on_traffic(Instant::now()); Vec::new() }
                Some(Err(e)) => {
                    tracing::debug!("events: connection failed: {e}");
                    return again;
                }
            },
            _ = tokio::time::sleep_until(deadline) => proto.on_tick(Instant::now()),
            _ = tx.closed() => {
                goodbye(proto, &mut sink, &mut stream, config.handshake_timeout).await;
                return Ended::Stop;
            }
        };
        for o in outputs {
            match o {
                Output::Send(s) => {
                    if let Err(e) = sink.send(Message::text(s)).await {
                        tracing::debug!("events: send failed: {e}");
                        return again;
                    }
                }
                Output::Ping => {
                    if let Err(e) = sink.send(Message::Ping(Default::default())).await {
                        tracing::debug!("events: send failed: {e}");
                        return again;
                    }
                }
                Output::Notice(n) => {
                    if matches!(n, LiveNotice::Live { .. }) {
                        *live_since = Some(Instant::now());
                    }
                    if !notify(tx, n).await {
                        goodbye(proto, &mut sink, &mut stream, config.handshake_timeout).await;
                        return Ended::Stop;
                    }
                }
                Output::Reconnect { why, immediate } => {
                    tracing::info!("events: reconnecting: {why}");
                    let _ = sink.close().await;
                    return Ended::Again { immediate };
                }
                Output::Stop => {
                    let _ = sink.close().await;
                    return Ended::Stop;
                }
            }
        }
    }
}

/// rustls with the ring provider and the platform's verifier, as reqwest is set up (see
/// [`super::http_client_builder`]). Built once; `None` (tungstenite's own rustls setup with
/// the native roots) if it cannot be built.
fn tls_connector() -> Option<tokio_tungstenite::Connector> {
    static CONFIG: OnceLock<Option<Arc<rustls::ClientConfig>>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        use rustls_platform_verifier::BuilderVerifierExt;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let built = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_platform_verifier())
            .map(|b| b.with_no_client_auth());
        match built {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                tracing::debug!("events: TLS setup failed ({e}); using tungstenite's");
                None
            }
        }
    });
    config.clone().map(tokio_tungstenite::Connector::Rustls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_follow_the_scope() {
        assert_eq!(
            event_filter(Scope::Account),
            "/restapi/v1.0/account/~/telephony/sessions"
        );
        assert_eq!(
            event_filter(Scope::Extension),
            "/restapi/v1.0/account/~/extension/~/telephony/sessions"
        );
    }

    #[test]
    fn token_debug_shows_no_secret() {
        let t = WsToken {
            ws_access_token: "s3cr3t".into(),
            uri: "wss://ws.example/ws".into(),
            expires_in: 30,
        };
        let d = format!("{t:?}");
        assert!(
            !d.contains("s3cr3t") && d.contains("wss://ws.example/ws"),
            "{d}"
        );
    }

    #[test]
    fn which_errors_mean_unavailable() {
        let e = |status, body: &str| ApiError::from_body(status, body.as_bytes(), "POST wstoken");
        assert!(is_unavailable(&e(403, "{}")));
        assert!(is_unavailable(&e(
            400,
            r#"{"errorCode":"CMN-408","message":"In order to call this API endpoint, user needs to have [X] permission"}"#
        )));
        assert!(!is_unavailable(&e(503, "{}")));
        assert!(!is_unavailable(&e(401, r#"{"errorCode":"OAU-149"}"#)));
        assert!(!is_unavailable(&ApiError::Config("x".into())));
    }

    #[test]
    fn the_tls_connector_builds() {
        assert!(tls_connector().is_some());
    }
}
