//! An emulated RingCentral account: the API host and the media host, in-process.
//!
//! ringfs is tested, benchmarked and demonstrated against this emulator, so it follows the
//! RingCentral API as documented (the contract, in these docs) and is never kinder than the real
//! service: tokens expire and die when replaced, the Heavy group allows 10 requests a minute and
//! a request sent during a penalty restarts it, records appear only some time after a call ends
//! and recordings only after that. Where the real service is undocumented (Content-Length, Range
//! support, `audio/x-wav`, cut and refused downloads), [`MediaBehaviour`] makes each answer a
//! setting, for the whole account or per recording ([`MediaQuirks`]), so that tests can mix them.
//!
//! # Layout
//! From the bottom up: each module uses only modules listed before it.
//! - `audio`: recording bytes generated on demand from `(key, offset)`; nothing is stored.
//! - `data`: the calls of the account, deterministic from the seed (metadata only).
//! - `quirks`: the media host's behaviour per recording, and what it has seen of each.
//! - `reply`: RingCentral's JSON and error bodies.
//! - `state`: what both hosts share: calls, tokens, rate buckets, faults, accounting.
//! - `rate`: the gate in front of every RingCentral endpoint: rate limits, 429s, injected 5xx.
//! - `oauth`: the token and revoke endpoints, and the token checks of the others.
//! - `call_log`: the call log endpoints.
//! - `events`: telephony session events: each call's timeline of party statuses, the event
//!   bodies, the event filters.
//! - `ws`: the WebSocket notifications: `wstoken`, the socket protocol (subscriptions,
//!   heartbeats, timeouts, recovery) and the ticker that delivers the events as calls go on.
//! - `media`: recording metadata and content, with the media quirks and faults.
//! - `files`: the plain HTTP directory of the recordings on the media host.
//! - `server`: the routers of both hosts and the accept loop (connection-level faults).
//!
//! Start it in-process with [`Emulator::start`] (tests) or [`run`] with listeners you bound
//! yourself (the `ringfs-emulator` binary). Both hosts listen on loopback ports; `contentUri`s in
//! the call log point at the media listener.

mod audio;
mod call_log;
mod data;
mod events;
mod files;
mod media;
mod oauth;
mod quirks;
mod rate;
mod reply;
mod server;
mod state;
mod ws;

pub use quirks::{MediaQuirks, PastEnd, RangeMode};

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Demo OAuth client id accepted by default (printed by `ringfs-emulator --help`).
pub const DEMO_CLIENT_ID: &str = "ringfs-demo-client";
/// Demo OAuth client secret accepted by default.
pub const DEMO_CLIENT_SECRET: &str = "ringfs-demo-secret";
/// Demo JWT credential accepted by default (opaque to the emulator: compared byte for byte).
pub const DEMO_JWT: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIyMjIyMjIyMiIsImlzcyI6InJpbmdmcy1lbXVsYXRvciIsImF1ZCI6ImRlbW8iLCJleHAiOjQxMDI0NDQ4MDB9.cmluZ2ZzLWVtdWxhdG9yIGRlbW8gc2lnbmF0dXJl";

/// The account's recording format (an account setting on the real service).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AudioFormat {
    /// Every recording is `audio/mpeg`.
    #[default]
    Mp3,
    /// Every recording is `audio/wav`.
    Wav,
    /// About a third of the recordings are WAV, the rest MP3 (exercises a client's renames).
    Mixed,
}

/// Per-group request limits; the defaults are the real service's.
///
/// Each group counts requests in a fixed window that opens with the first request after the
/// previous window closed. The request that exceeds the limit gets 429 and starts a penalty of
/// `penalty`; every request in that group during the penalty gets 429 too and restarts it. When
/// the penalty has run out, a fresh window opens.
#[derive(Clone, Debug)]
pub struct RateLimits {
    /// Length of the counting window (`X-Rate-Limit-Window`), 60 s on the real service.
    pub window: Duration,
    /// Penalty after the limit is exceeded (`Retry-After`), 60 s on the real service.
    pub penalty: Duration,
    /// Light group limit per window (50): subscription renew, get and delete over the WebSocket.
    pub light: u32,
    /// Medium group limit per window (40): subscription create over the WebSocket.
    pub medium: u32,
    /// Heavy group limit per window (10): call log, recording metadata and content.
    pub heavy: u32,
    /// Auth group limit per window (5): token, revoke and wstoken.
    pub auth: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            window: Duration::from_secs(60),
            penalty: Duration::from_secs(60),
            light: 50,
            medium: 40,
            heavy: 10,
            auth: 5,
        }
    }
}

impl RateLimits {
    /// No limit in any group (headers are still sent).
    pub fn unlimited() -> Self {
        RateLimits {
            light: u32::MAX,
            medium: u32::MAX,
            heavy: u32::MAX,
            auth: u32::MAX,
            ..Self::default()
        }
    }
}

/// How the media host answers where the real service's behaviour is undocumented.
///
/// Each recording is served with one [`MediaQuirks`]: [`Emulator::set_media_quirks`] if called
/// for it, else `per_recording`, else one drawn from `mixed`, else the flags (which stand for
/// `chunked`, `close_delimited`, [`RangeMode::Ignore`] and `x_wav`). [`Emulator::media_quirks`] tells which.
#[derive(Clone, Debug, Default)]
pub struct MediaBehaviour {
    /// Send bodies chunked, without `Content-Length`.
    pub omit_content_length: bool,
    /// Send bodies without `Content-Length`, delimited by closing the connection (HTTP/1.0).
    pub close_delimited: bool,
    /// Ignore `Range`: always 200 with the whole body, no `Accept-Ranges`.
    pub ignore_range: bool,
    /// Say `audio/x-wav` instead of `audio/wav` (older services did).
    pub x_wav: bool,
    /// Every recording draws its own `MediaQuirks` from this seed (see [`MediaQuirks::draw`]);
    /// the flags above are then ignored.
    pub mixed: Option<u64>,
    /// Quirks for particular recording ids; wins over `mixed` and the flags.
    pub per_recording: std::collections::HashMap<String, MediaQuirks>,
}

/// Fault injection; [`Emulator::set_faults`] changes it while running.
///
/// Fractions are probabilities per request in `0.0..=1.0`, decided by a seeded counter.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Media: close the connection after this many body bytes of a response. When set while
    /// `drop_fraction` is 0, every media response is cut.
    pub drop_after_bytes: Option<u64>,
    /// Media: fraction of responses cut mid-body (after `drop_after_bytes`, default half the body).
    pub drop_fraction: f64,
    /// Media: body speed cap in bytes per second.
    pub max_bytes_per_sec: Option<u64>,
    /// Any RingCentral endpoint: fraction answered 503 `CMN-201` (with `Retry-After: 1`), 500 or 502.
    pub error_5xx_fraction: f64,
    /// Any RingCentral endpoint: fraction answered 429 `CMN-301` regardless of the budget (no penalty).
    pub force_429_fraction: f64,
    /// `Retry-After` of forced 429s; `None` sends none (clients must then wait 30 s or more).
    pub force_429_retry_after: Option<u64>,
    /// Call-log pages: fraction answered with truncated, invalid JSON (status 200).
    pub malformed_json_fraction: f64,
    /// Both hosts close every connection at once, before answering.
    pub unreachable: bool,
    /// Both hosts accept connections and read requests but answer nothing while this is set (a
    /// black-holed or overloaded service: clients see timeouts, not errors). Requests held when
    /// it is cleared are then answered normally.
    pub hang: bool,
    /// Call-log pages after the first start this many records early, so the last records of a
    /// page come again at the top of the next (what a client sees when new calls arrive while it
    /// pages): duplicate records across pages.
    pub page_overlap: u64,
}

/// A call added to the generated data set, to pin down records the generator does not make
/// (hostile names, a 0-byte or a huge recording, thousands of calls on one date, sparse
/// records). Its recording's bytes are generated like any other's from `duration_s`; an MP3
/// recording of 0 seconds is 0 bytes long.
#[derive(Clone, Debug)]
pub struct ExtraCall {
    pub session_id: String,
    pub start: jiff::Timestamp,
    pub duration_s: u32,
    pub inbound: bool,
    /// The other party's number and name (either may be missing).
    pub other_number: Option<String>,
    pub other_name: Option<String>,
    /// `None`: a call without a recording.
    pub recording_id: Option<String>,
    /// Serve the record with only `id`, `sessionId`, `startTime` and `recording` (`id`,
    /// `contentUri`): every optional field missing.
    pub sparse: bool,
}

/// Emulator settings. [`Config::default`] is the demo account.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seed of the data set and of fault decisions (default 1).
    pub seed: u64,
    /// Number of generated calls (default 300), plus the example call (recording 44444444).
    pub calls: usize,
    /// Calls are spread over the last `days` dates in UTC, today up to now included, as a
    /// mount's `--days` counts them (default 90).
    pub days: u32,
    /// Recording format of the account.
    pub format: AudioFormat,
    /// Expected OAuth client id.
    pub client_id: String,
    /// Expected OAuth client secret.
    pub client_secret: String,
    /// Expected JWT assertion.
    pub jwt: String,
    /// Lifetime of access tokens (a shorter `access_token_ttl` in the request wins).
    pub access_ttl: Duration,
    /// Lifetime of refresh tokens (a shorter `refresh_token_ttl` in the request wins).
    pub refresh_ttl: Duration,
    /// Whether the app has refresh tokens enabled.
    pub issue_refresh_tokens: bool,
    /// The user is an admin; when false the account-level call log answers 403.
    pub admin: bool,
    /// Rate limits per group.
    pub rate: RateLimits,
    /// Delay from a call's end until its record shows in the call log (15..30 s on the real service).
    pub record_delay: Duration,
    /// Delay from the record showing until the recording content can be fetched.
    pub recording_delay: Duration,
    /// `Some(i)`: a new call ends every `i` after start (a live account).
    pub live: Option<Duration>,
    /// Media host behaviour.
    pub media: MediaBehaviour,
    /// Initial faults.
    pub faults: Faults,
    /// Calls added to the generated ones (after them in numbering; see [`ExtraCall`]).
    pub extra_calls: Vec<ExtraCall>,
    /// WebSocket notifications; [`Emulator::set_notifications`] changes them while running.
    pub notifications: Notifications,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 1,
            calls: 300,
            days: 90,
            format: AudioFormat::Mp3,
            client_id: DEMO_CLIENT_ID.into(),
            client_secret: DEMO_CLIENT_SECRET.into(),
            jwt: DEMO_JWT.into(),
            access_ttl: Duration::from_secs(3600),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            issue_refresh_tokens: true,
            admin: true,
            rate: RateLimits::default(),
            record_delay: Duration::from_secs(20),
            recording_delay: Duration::from_secs(10),
            live: None,
            media: MediaBehaviour::default(),
            faults: Faults::default(),
            extra_calls: Vec::new(),
            notifications: Notifications::default(),
        }
    }
}

/// The WebSocket notifications (`POST /restapi/oauth/wstoken`, the socket at its `uri`) and the
/// telephony session events; the defaults are the real service's where the contract tells them.
///
/// Every field can change while running ([`Emulator::set_notifications`]): the windows,
/// timeouts and `drop_after` of a connection are those in force when it opened (the windows are
/// what its `ConnectionDetails` announced), the event timings and `out_of_order` those in force when the
/// call was scheduled (when it started), everything else applies at once.
///
/// Error codes the contract does not name are the emulator's own: `WSG-901` (a `ws_access_token`
/// that is unknown, already used, or missing), `WSG-904` (one that expired), `WSG-1001` (a
/// recovery `wsc` token that is unknown or whose session is gone: `recoveryState` `Failed`),
/// `SUB-521` (an event filter other than the telephony sessions ones), `SUB-522` (a transport
/// other than `WebSocket`), `WSG-101` (a client message that is not `[header, body?]` or of an
/// unknown type), `WSG-1006` (the connection lost its session to a recovery on another one). `WSG-902` (idle) and `WSG-903` (too old) are the contract's;
/// `WSG-1003` (recovering another login's session) and `WSG-1005` (nothing to recover: the
/// session had no subscription) are what RingCentral was seen to answer.
#[derive(Clone, Debug)]
pub struct Notifications {
    /// Lifetime of a `ws_access_token` (30 s). `expires_in` says it in whole seconds, rounded up.
    pub wstoken_ttl: Duration,
    /// `recoveryTimeout`: how long a connection's session (its subscription and missed events)
    /// outlives the connection (180 s).
    pub recovery_timeout: Duration,
    /// `recoveryBufferSize`: events kept per session for a recovery (100).
    pub recovery_buffer_size: usize,
    /// `idleTimeout`: a connection with no message from the client for this long gets an
    /// `Error` `WSG-902` and is closed (1800 s).
    pub idle_timeout: Duration,
    /// `absoluteTimeout`: a connection this old gets an `Error` `WSG-903` and is closed (86400 s).
    pub absolute_timeout: Duration,
    /// `maxConnectionsPerSession` (announced only).
    pub max_connections_per_session: u32,
    /// `maxActiveRequests` (announced only: requests are answered one by one).
    pub max_active_requests: u32,
    /// `expiresIn` of a subscription (it renews itself while its session lives), 900 s.
    pub subscription_ttl: Duration,
    /// Drop every connection this long after it opened, abruptly: no `Error`, no close frame
    /// (a network cut). The session stays recoverable.
    pub drop_after: Option<Duration>,
    /// `Some(permission)`: `wstoken` answers 403 `CMN-401` for lack of that app permission
    /// (e.g. `WebSocketsSubscription`).
    pub refuse_wstoken: Option<String>,
    /// `Some(permission)`: a subscription request over the socket answers 403 `CMN-401` for
    /// lack of that app permission (e.g. `CallControl`).
    pub refuse_subscription: Option<String>,
    /// From a call's start to its `Proceeding` (1 s; at most a quarter of the call).
    pub proceeding_after: Duration,
    /// From a call's start to its `Answered` (3 s; at most half of the call).
    pub answered_after: Duration,
    /// Events are sent this long after their `eventTime` (0).
    pub delivery_delay: Duration,
    /// Deliver the events of a session in swapped pairs: 2 before 1, 4 before 3, ... (each pair
    /// when its later event is due), so that `body.sequence` runs backwards within each pair.
    pub out_of_order: bool,
    /// Emit a `Disconnected` with `status.reason` `BlindTransfer` halfway through each answered
    /// call, before its final `Disconnected` (the session goes on).
    pub transfer_reason: bool,
}

impl Default for Notifications {
    fn default() -> Self {
        Notifications {
            wstoken_ttl: Duration::from_secs(30),
            recovery_timeout: Duration::from_secs(180),
            recovery_buffer_size: 100,
            idle_timeout: Duration::from_secs(1800),
            absolute_timeout: Duration::from_secs(86_400),
            max_connections_per_session: 5,
            max_active_requests: 10,
            subscription_ttl: Duration::from_secs(900),
            drop_after: None,
            refuse_wstoken: None,
            refuse_subscription: None,
            proceeding_after: Duration::from_secs(1),
            answered_after: Duration::from_secs(3),
            delivery_delay: Duration::ZERO,
            out_of_order: false,
            transfer_reason: false,
        }
    }
}

impl Notifications {
    /// Sets [`Notifications::wstoken_ttl`].
    pub fn wstoken_ttl(mut self, d: Duration) -> Self {
        self.wstoken_ttl = d;
        self
    }
    /// Sets [`Notifications::recovery_timeout`].
    pub fn recovery_timeout(mut self, d: Duration) -> Self {
        self.recovery_timeout = d;
        self
    }
    /// Sets [`Notifications::recovery_buffer_size`].
    pub fn recovery_buffer_size(mut self, n: usize) -> Self {
        self.recovery_buffer_size = n;
        self
    }
    /// Sets [`Notifications::idle_timeout`].
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }
    /// Sets [`Notifications::absolute_timeout`].
    pub fn absolute_timeout(mut self, d: Duration) -> Self {
        self.absolute_timeout = d;
        self
    }
    /// Sets [`Notifications::drop_after`].
    pub fn drop_after(mut self, d: Option<Duration>) -> Self {
        self.drop_after = d;
        self
    }
    /// Sets [`Notifications::refuse_wstoken`].
    pub fn refuse_wstoken(mut self, permission: Option<&str>) -> Self {
        self.refuse_wstoken = permission.map(String::from);
        self
    }
    /// Sets [`Notifications::refuse_subscription`].
    pub fn refuse_subscription(mut self, permission: Option<&str>) -> Self {
        self.refuse_subscription = permission.map(String::from);
        self
    }
    /// Sets [`Notifications::proceeding_after`] and [`Notifications::answered_after`].
    pub fn event_delays(mut self, proceeding: Duration, answered: Duration) -> Self {
        self.proceeding_after = proceeding;
        self.answered_after = answered;
        self
    }
    /// Sets [`Notifications::delivery_delay`].
    pub fn delivery_delay(mut self, d: Duration) -> Self {
        self.delivery_delay = d;
        self
    }
    /// Sets [`Notifications::out_of_order`].
    pub fn out_of_order(mut self, on: bool) -> Self {
        self.out_of_order = on;
        self
    }
    /// Sets [`Notifications::transfer_reason`].
    pub fn transfer_reason(mut self, on: bool) -> Self {
        self.transfer_reason = on;
        self
    }
}

/// A call to start now with [`Emulator::start_call`].
#[derive(Clone, Debug)]
pub struct NewCall {
    /// Length of the call (whole seconds; at least 1).
    pub duration: Duration,
    /// Whether it has a recording.
    pub recorded: bool,
    /// Inbound (true) or outbound.
    pub inbound: bool,
}

impl Default for NewCall {
    /// A recorded inbound call of 2 seconds.
    fn default() -> Self {
        NewCall {
            duration: Duration::from_secs(2),
            recorded: true,
            inbound: true,
        }
    }
}

/// Request accounting, also served as JSON at `GET /__emulator/stats` on the API host.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Requests per endpoint: `token`, `revoke`, `account-call-log`, `extension-call-log`,
    /// `recording-meta`, `recording-content`, `wstoken`, and over the WebSocket `subscription-create`,
    /// `subscription-renew`, `subscription-get`, `subscription-delete` (throttled and failed
    /// requests count too), and the
    /// plain directory of the media host: `files-index`, `files-head`, `files-get` (no group).
    pub by_endpoint: BTreeMap<String, u64>,
    /// Requests per rate group: `Heavy`, `Auth`, and `Light` and `Medium` (subscription requests
    /// over the WebSocket).
    pub by_group: BTreeMap<String, u64>,
    /// 429 answers sent (budget, penalty and forced).
    pub throttled: u64,
    /// Requests received in a group while its penalty was running.
    pub penalty_violations: u64,
    /// Requests received in a group after a 429 was answered in it and before that 429's
    /// `Retry-After` (30 s when it had none: the least a client must wait then) had passed,
    /// not counting those that arrived within [`IN_FLIGHT_GRACE`] of the 429: those may have
    /// been sent before the client could see it. Counts forced 429s too, which
    /// `penalty_violations` does not (they start no penalty).
    pub retry_after_violations: u64,
    /// Media body bytes sent.
    pub bytes_served: u64,
    /// Injected faults (5xx, forced 429, malformed JSON, dropped or refused connections),
    /// including the 5xx and cuts of [`MediaQuirks`] (not their 404s).
    pub faults_injected: u64,
    /// Media content requests per recording id, every answer counted (401, 404, 416, 429, 5xx too).
    #[serde(default)]
    pub media_by_recording: BTreeMap<String, u64>,
    /// `POST /restapi/oauth/wstoken` requests, every answer counted (also `by_endpoint["wstoken"]`).
    #[serde(default)]
    pub ws_tokens: u64,
    /// WebSocket connections opened (upgraded), refused ones included.
    #[serde(default)]
    pub ws_connections: u64,
    /// Subscriptions created over a WebSocket (successful `POST /restapi/v1.0/subscription`).
    #[serde(default)]
    pub ws_subscriptions: u64,
    /// Event messages (`ServerNotification`) written to a socket, replays included.
    #[serde(default)]
    pub ws_events_sent: u64,
    /// Recoveries answered `recoveryState: "Successful"`.
    #[serde(default)]
    pub ws_recoveries: u64,
}

impl Stats {
    /// Requests to one endpoint (0 when none).
    pub fn endpoint(&self, k: &str) -> u64 {
        self.by_endpoint.get(k).copied().unwrap_or(0)
    }
    /// Call-log requests, account and extension level.
    pub fn call_log(&self) -> u64 {
        self.endpoint("account-call-log") + self.endpoint("extension-call-log")
    }
    /// Media (recording content) requests.
    pub fn media(&self) -> u64 {
        self.endpoint("recording-content")
    }
    /// Media content requests for one recording (0 when none).
    pub fn media_of(&self, recording_id: &str) -> u64 {
        self.media_by_recording
            .get(recording_id)
            .copied()
            .unwrap_or(0)
    }
}

/// See [`Stats::retry_after_violations`].
pub const IN_FLIGHT_GRACE: Duration = Duration::from_secs(1);

/// Ground truth about one call, for tests.
#[derive(Clone, Debug)]
pub struct CallInfo {
    pub call_log_id: String,
    pub session_id: String,
    pub telephony_session_id: String,
    pub start: jiff::Timestamp,
    pub duration_s: u64,
    pub end: jiff::Timestamp,
    pub inbound: bool,
    pub from_number: Option<String>,
    pub from_name: Option<String>,
    pub to_number: Option<String>,
    pub to_name: Option<String>,
    /// The extension whose call log holds the record.
    pub extension_id: String,
    pub recording_id: Option<String>,
    /// `audio/mpeg` or `audio/wav` (`audio/x-wav` when the recording's [`MediaQuirks::x_wav`] is set).
    pub content_type: Option<&'static str>,
    /// Size in bytes of the recording content.
    pub recording_len: Option<u64>,
    /// When the record shows in the call log.
    pub visible_at: jiff::Timestamp,
    /// When the recording content can be fetched.
    pub fetchable_at: jiff::Timestamp,
}

/// A running emulator; dropping it stops the servers too.
pub struct Emulator {
    state: Arc<state::State>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Emulator {
    /// Binds `127.0.0.1:0` for the API and the media host and serves them in background tasks.
    pub async fn start(config: Config) -> std::io::Result<Emulator> {
        let api = TcpListener::bind("127.0.0.1:0").await?;
        let media = TcpListener::bind("127.0.0.1:0").await?;
        let state = Arc::new(state::State::new(
            config,
            api.local_addr()?,
            media.local_addr()?,
        ));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(state.clone(), api, media, async move {
            let _ = rx.await;
        }));
        Ok(Emulator {
            state,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// Base URL of the API host (what `RC_SERVER_URL` would be), e.g. `http://127.0.0.1:40123`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.state.api_addr)
    }

    /// Base URL of the media host.
    pub fn media_url(&self) -> String {
        format!("http://{}", self.state.media_addr)
    }

    /// The plain HTTP directory of the recordings on the media host (an HTML index; no auth, no
    /// rate limits), e.g. `http://127.0.0.1:40124/__emulator/files/`.
    pub fn files_url(&self) -> String {
        format!("http://{}{}", self.state.media_addr, files::FILES_PATH)
    }

    /// A snapshot of the request accounting.
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// Zeroes the request accounting.
    pub fn reset_stats(&self) {
        self.state.reset_stats();
    }

    /// Replaces the fault settings; takes effect for the next request.
    pub fn set_faults(&self, faults: Faults) {
        self.state.set_faults(faults);
    }

    /// The media quirks in force for a recording, whichever way they were set (see
    /// [`MediaBehaviour`]); for an unknown id, those of a 0-byte recording.
    pub fn media_quirks(&self, recording_id: &str) -> MediaQuirks {
        self.state.media_quirks(recording_id)
    }

    /// Sets a recording's media quirks while running; they win over the configuration, and the
    /// recording's request count (`not_found_first`, `errors_first`) and fired drops start afresh.
    pub fn set_media_quirks(&self, recording_id: &str, q: MediaQuirks) {
        self.state.set_media_quirks(recording_id, q);
    }

    /// Every call of the account, including live calls that have started so far.
    pub fn calls(&self) -> Vec<CallInfo> {
        self.state.call_infos()
    }

    /// The exact bytes the media host serves for a recording (whether fetchable yet or not).
    pub fn recording_bytes(&self, recording_id: &str) -> Option<Vec<u8>> {
        self.state.recording_bytes(recording_id)
    }

    /// The bytes `offset .. offset + len` of a recording (clamped to its end), without building
    /// the whole file: ground truth for huge recordings.
    pub fn recording_range(&self, recording_id: &str, offset: u64, len: u64) -> Option<Vec<u8>> {
        self.state.recording_range(recording_id, offset, len)
    }

    /// Replaces the notification settings while running (see [`Notifications`] for when each
    /// takes effect).
    pub fn set_notifications(&self, n: Notifications) {
        self.state.set_notifications(n);
    }

    /// Starts a call now, owned by the authorized user (extension `~`), and returns it. Its
    /// events follow its timeline from now (see [`Notifications`]); its record reaches the call
    /// log `record_delay` after it ends and its recording is fetchable `recording_delay` later.
    pub fn start_call(&self, call: NewCall) -> CallInfo {
        self.state.start_call(call)
    }

    /// Drops every open WebSocket connection at once, abruptly (no `Error`, no close frame);
    /// their sessions stay recoverable.
    pub fn drop_ws_connections(&self) {
        self.state.drop_ws_connections();
    }

    /// The number of WebSocket connections open now.
    pub fn ws_open_connections(&self) -> usize {
        self.state.ws_open_connections()
    }

    /// Stops both servers and waits for them.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Serves the API on `api` and the media host on `media` until `shutdown` completes.
pub async fn run(
    api: TcpListener,
    media: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(state::State::new(
        config,
        api.local_addr()?,
        media.local_addr()?,
    ));
    server::serve(state, api, media, shutdown).await
}
