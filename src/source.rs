//! Binds the RingCentral client to the traits the core and the media layer are written against
//! ([`crate::fs::CallLog`], [`crate::media::MediaSource`]), so neither of them names HTTP.

use std::time::Duration;

use jiff::Timestamp;

use crate::api::{
    ApiError, BodyEnd, CallRecord, Client, MediaStream, Priority, RecordingMeta, Scope, chain,
};
use tokio::sync::{mpsc, oneshot};

use crate::api::{EventsConfig, LiveNotice, spawn_events};
use crate::fs::{CallLog, Page, ScopeChoice};
use crate::media::{BoxFuture, MediaBody, MediaError, MediaSource, RecordingKey};

impl CallLog for Client {
    fn page(
        &self,
        scope: Scope,
        from: Timestamp,
        to: Timestamp,
        next: Option<String>,
        prio: Priority,
    ) -> BoxFuture<'_, Result<Page, ApiError>> {
        Box::pin(async move {
            self.call_log_page(scope, from, to, next.as_deref(), prio)
                .await
        })
    }

    fn find_session<'a>(
        &'a self,
        scope: Scope,
        session_id: &'a str,
        since: Timestamp,
        prio: Priority,
    ) -> BoxFuture<'a, Result<Vec<CallRecord>, ApiError>> {
        Box::pin(Client::find_session(self, scope, session_id, since, prio))
    }

    fn recording_meta<'a>(
        &'a self,
        id: &'a str,
        prio: Priority,
    ) -> BoxFuture<'a, Result<RecordingMeta, ApiError>> {
        Box::pin(Client::recording_meta(self, id, prio))
    }

    fn recording_content_url(&self, id: &str) -> Option<String> {
        Client::recording_content_url(self, id)
    }
}

/// The media layer's source: one `GET contentUri` (with `Range` when `offset > 0`) per open.
pub struct ApiMedia {
    client: Client,
}

impl ApiMedia {
    pub fn new(client: Client) -> ApiMedia {
        ApiMedia { client }
    }
}

/// 404 means not (yet) there; what another request may not repeat is transient (the media
/// layer retries it within its budget); the rest is final.
fn media_error(e: ApiError) -> MediaError {
    if e.is_not_found() {
        MediaError::NotAvailable(chain(&e))
    } else if e.is_transient() {
        MediaError::Transient(chain(&e))
    } else {
        MediaError::Failed(chain(&e))
    }
}

impl MediaSource for ApiMedia {
    fn open(
        &self,
        key: &RecordingKey,
        offset: u64,
        prio: Priority,
    ) -> BoxFuture<'_, Result<Box<dyn MediaBody>, MediaError>> {
        let uri = key.content_uri.clone();
        Box::pin(async move {
            let stream = self
                .client
                .open_media(&uri, offset, prio)
                .await
                .map_err(media_error)?;
            Ok(Box::new(Body(stream)) as Box<dyn MediaBody>)
        })
    }
}

struct Body(MediaStream);

impl MediaBody for Body {
    fn content_type(&self) -> Option<&str> {
        self.0.content_type()
    }
    fn total_len(&self) -> Option<u64> {
        self.0.total_len()
    }
    fn end(&self) -> BodyEnd {
        self.0.end()
    }
    fn validator(&self) -> Option<&str> {
        self.0.validator()
    }
    fn ended_at(&self) -> Option<u64> {
        self.0.ended_at()
    }
    fn skipped(&self) -> crate::media::Skipped {
        self.0.skipped().clone()
    }
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<bytes::Bytes>, MediaError>> {
        Box::pin(async move { self.0.next_chunk().await.map_err(media_error) })
    }
}

/// Feeds `tx` the live notices of the call log the mount reads: the subscription of `scope`,
/// or with [`ScopeChoice::Auto`] the account's first and, when that one is refused (a user who
/// may not see the whole account's calls), the extension's. Only the last refusal reaches the
/// core, so it falls back to listing only when no subscription is allowed at all. `first`, when
/// given, receives the first notice that settles whether events flow (`Live` or
/// `Unavailable`), for a mount that insists on events.
pub async fn live_feed(
    client: Client,
    scope: ScopeChoice,
    config: EventsConfig,
    tx: mpsc::Sender<LiveNotice>,
    mut first: Option<oneshot::Sender<LiveNotice>>,
) {
    let scopes: &[Scope] = match scope {
        ScopeChoice::Auto => &[Scope::Account, Scope::Extension],
        ScopeChoice::Fixed(Scope::Account) => &[Scope::Account],
        ScopeChoice::Fixed(Scope::Extension) => &[Scope::Extension],
    };
    for (i, &s) in scopes.iter().enumerate() {
        let last = i + 1 == scopes.len();
        let (inner_tx, mut inner) = mpsc::channel(256);
        let task = spawn_events(client.clone(), s, config, inner_tx);
        loop {
            let notice = tokio::select! {
                n = inner.recv() => match n {
                    Some(n) => n,
                    None => break,
                },
                _ = tx.closed() => {
                    stop_gracefully(inner, task).await;
                    return;
                }
            };
            if let LiveNotice::Unavailable(why) = &notice
                && !last
            {
                tracing::info!("no {} events ({why}); trying the extension's", s.name());
                break;
            }
            if matches!(notice, LiveNotice::Live { .. } | LiveNotice::Unavailable(_))
                && let Some(first) = first.take()
            {
                let _ = first.send(notice.clone());
            }
            if tx.send(notice).await.is_err() {
                stop_gracefully(inner, task).await;
                return;
            }
        }
        task.abort();
    }
}

/// How long a stopping feed may take to delete its subscription (one WebSocket message).
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Ends a subscription's task the way it ends when its consumer goes away: it sees its channel
/// closed, deletes the subscription over the socket and closes the connection (instead of
/// leaving a subscription behind that the service keeps until it expires). Bounded: a task in
/// the middle of connecting is aborted after [`GOODBYE_TIMEOUT`].
async fn stop_gracefully(inner: mpsc::Receiver<LiveNotice>, mut task: tokio::task::JoinHandle<()>) {
    drop(inner);
    tracing::debug!("events: the consumer is gone; ending the subscription");
    if tokio::time::timeout(GOODBYE_TIMEOUT, &mut task)
        .await
        .is_err()
    {
        task.abort();
    }
}
