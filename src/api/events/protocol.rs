//! The WebSocket notification protocol as a pure state machine: text frames and the clock in,
//! frames to send and [`LiveNotice`]s out. No I/O, so every rule below is unit-tested here.
//!
//! One connection goes through these phases:
//! 1. *awaiting details*: nothing may be sent until the server's first message,
//!    `ConnectionDetails` (or `Error` when it refuses the connection). Its body carries the
//!    limits (`recoveryTimeout`, `idleTimeout`, `absoluteTimeout`, in seconds) and, when the
//!    connection was opened with `&wsc=<token>`, `recoveryState`. RingCentral's SDKs read
//!    `recoveryState` from the body; it is accepted in the header too.
//! 2. *subscribing*: unless the session was recovered, one `ClientRequest`
//!    `POST /restapi/v1.0/subscription` with a fresh uuid `messageId` goes out. Its answer is
//!    recognised by that `messageId` (or, as RingCentral's Python SDK does, by a
//!    `WSG-SubscriptionId` header while a subscription is pending). 2xx: live, with a gap (the
//!    events before it were never seen). A refusal that names a missing permission (403,
//!    `CMN-401`/`CMN-408`, "permission" in the message): events are unavailable for good. Any
//!    other refusal: reconnect later.
//! 3. *live*: `ServerNotification`s become [`LiveNotice::Event`]s, minus duplicates (a
//!    recovered session replays what it buffered, which may include events already delivered):
//!    an event is known by its envelope's `uuid`, or by `(sessionId, sequence)` without one, in a
//!    bounded memory of the newest [`SEEN_CAP`] keys.
//!
//! Throughout, every server header may carry `wsc: {token, sequence}`: the newest (highest
//! `sequence`; a `ConnectionDetails` starts a new count) is kept for recovery. A heartbeat goes
//! out when nothing was received or nothing was sent for `heartbeat`; a server that then says
//! nothing for `heartbeat_timeout` is treated as a dropped connection. The connection is
//! replaced before `absoluteTimeout` ends it. `Error` messages (`WSG-902` idle, `WSG-903` too
//! old, others) lead to a reconnect.
//!
//! A reconnect asks for recovery (`wsc`) when there is a token and a subscription and the
//! connection was lost less than `recoveryTimeout` ago; `recoveryState: Successful` means
//! live without a gap, anything else means subscribe again (with a gap).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::model::{LiveNotice, SessionEvent};

/// How many delivered events are remembered for deduplication. The server replays at most
/// `recoveryBufferSize` (100) events after a recovery; ten times that is plenty.
pub const SEEN_CAP: usize = 1000;

/// The subscription endpoint, over the socket.
const SUBSCRIPTION_PATH: &str = "/restapi/v1.0/subscription";

/// The timing the state machine works with (the supervisor's settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Send a heartbeat after this long without receiving or without sending anything.
    pub heartbeat: Duration,
    /// A heartbeat unanswered (nothing received) for this long means the connection is dead.
    pub heartbeat_timeout: Duration,
    /// Limit on waiting for `ConnectionDetails` and for the subscription's answer.
    pub handshake_timeout: Duration,
}

/// The connection limits of `ConnectionDetails` (the guide's values until the server says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long after a loss the session can be recovered.
    pub recovery_timeout: Duration,
    /// The server closes a connection idle this long (`WSG-902`).
    pub idle_timeout: Duration,
    /// The server closes a connection this old (`WSG-903`).
    pub absolute_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            recovery_timeout: Duration::from_secs(180),
            idle_timeout: Duration::from_secs(1800),
            absolute_timeout: Duration::from_secs(86_400),
        }
    }
}

/// The recovery token of the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wsc {
    /// `wsc.token`: appended as `&wsc=` to recover the session.
    pub token: String,
    /// `wsc.sequence`: the newest wins.
    pub sequence: u64,
}

/// What the state machine asks the connection to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send this text frame.
    Send(String),
    /// Send a WebSocket ping along with a heartbeat: RFC 6455 obliges the server to answer
    /// with a pong, so a server that does not echo JSON heartbeats (the guide does not say
    /// it must) still shows it is alive, and only a dead connection stays silent.
    Ping,
    /// Hand this to the consumer.
    Notice(LiveNotice),
    /// Close this connection and open another. `immediate`: an expected close (idle, age),
    /// worth reconnecting at once; otherwise after the backoff.
    Reconnect {
        /// Why, for the log.
        why: String,
        /// Reconnect without waiting.
        immediate: bool,
    },
    /// Close and stop for good (follows a [`LiveNotice::Unavailable`]).
    Stop,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// No connection.
    Closed,
    /// Connected, waiting for `ConnectionDetails`.
    AwaitDetails { since: Instant },
    /// The subscription request `message_id` is out.
    Subscribing { message_id: String, since: Instant },
    /// Subscribed (or recovered).
    Live,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Uuid(String),
    Sequence(String, u64),
}

/// A bounded set of the newest keys.
#[derive(Debug, Default)]
struct Seen {
    set: HashSet<Key>,
    order: VecDeque<Key>,
}

impl Seen {
    /// False when `k` was already there.
    fn insert(&mut self, k: Key) -> bool {
        if !self.set.insert(k.clone()) {
            return false;
        }
        self.order.push_back(k);
        if self.order.len() > SEEN_CAP
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

/// The protocol state of one event feed, across its connections.
#[derive(Debug)]
pub struct Protocol {
    /// The one event filter subscribed to.
    filter: String,
    timing: Timing,
    /// From the newest `ConnectionDetails`.
    limits: Limits,
    phase: Phase,
    /// The newest recovery token.
    wsc: Option<Wsc>,
    /// The live subscription's id, as the server named it.
    subscription_id: Option<String>,
    /// This connection was opened with `&wsc=`.
    recovering: bool,
    /// When this connection opened.
    connected_at: Option<Instant>,
    last_rx: Instant,
    last_tx: Instant,
    /// When the unanswered heartbeat went out.
    heartbeat_sent: Option<Instant>,
    /// When the outage began (the first loss since the feed was last live).
    lost_at: Option<Instant>,
    /// A `Live` went out and no `Down` since.
    announced_live: bool,
    /// A subscription has been made before (for the log: "subscribed" vs "resubscribed").
    ever_subscribed: bool,
    seen: Seen,
}

/// A random (version 4) UUID, for `messageId`s.
pub fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn u64_of(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn str_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `(errorCode, message)` of an error body of any shape (`errorCode`/`message` at the top or
/// in `errors[0]`, OAuth's `error_description`), falling back to the header's own fields.
fn error_of(header: &Value, body: Option<&Value>) -> (Option<String>, String) {
    let mut code = None;
    let mut message = None;
    for v in [body, Some(header)].into_iter().flatten() {
        let first = v.get("errors").and_then(|e| e.get(0));
        code = code
            .or_else(|| str_of(v.get("errorCode")))
            .or_else(|| first.and_then(|f| str_of(f.get("errorCode"))));
        message = message
            .or_else(|| str_of(v.get("message")))
            .or_else(|| first.and_then(|f| str_of(f.get("message"))))
            .or_else(|| str_of(v.get("error_description")));
    }
    (code, message.unwrap_or_default())
}

/// Whether a refusal says the app or user lacks a permission (as opposed to a passing fault).
pub fn is_permission_error(status: Option<u64>, code: Option<&str>, message: &str) -> bool {
    status == Some(403)
        || matches!(code, Some("CMN-401" | "CMN-408"))
        || message.to_ascii_lowercase().contains("permission")
}

fn describe(status: Option<u64>, code: &Option<String>, message: &str) -> String {
    let mut s = String::new();
    if let Some(st) = status {
        s.push_str(&st.to_string());
    }
    if let Some(c) = code {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(c);
    }
    if !message.is_empty() {
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(message);
    }
    if s.is_empty() {
        s.push_str("no details");
    }
    s
}

impl Protocol {
    /// A feed of `filter`, not connected yet.
    pub fn new(filter: impl Into<String>, timing: Timing) -> Protocol {
        let now = Instant::now();
        Protocol {
            filter: filter.into(),
            timing,
            limits: Limits::default(),
            phase: Phase::Closed,
            wsc: None,
            subscription_id: None,
            recovering: false,
            connected_at: None,
            last_rx: now,
            last_tx: now,
            heartbeat_sent: None,
            lost_at: None,
            announced_live: false,
            ever_subscribed: false,
            seen: Seen::default(),
        }
    }

    /// The newest recovery token.
    pub fn wsc(&self) -> Option<&Wsc> {
        self.wsc.as_ref()
    }

    /// The subscription's id, once the server gave one.
    pub fn subscription_id(&self) -> Option<&str> {
        self.subscription_id.as_deref()
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Subscribed or recovered, on an open connection.
    pub fn is_live(&self) -> bool {
        self.phase == Phase::Live
    }

    /// A new connection is about to be opened: the recovery token to append as `&wsc=`, if
    /// recovering is worth trying (a token, a subscription to recover, within
    /// `recoveryTimeout` of the loss).
    pub fn begin(&mut self, now: Instant) -> Option<String> {
        let in_time = self
            .lost_at
            .is_none_or(|t| now.saturating_duration_since(t) < self.limits.recovery_timeout);
        let token = match (&self.wsc, &self.subscription_id) {
            (Some(w), Some(_)) if in_time => Some(w.token.clone()),
            _ => None,
        };
        self.recovering = token.is_some();
        token
    }

    /// The connection is open.
    pub fn opened(&mut self, now: Instant) {
        self.phase = Phase::AwaitDetails { since: now };
        self.connected_at = Some(now);
        self.last_rx = now;
        self.last_tx = now;
        self.heartbeat_sent = None;
    }

    /// The connection is gone (closed, dropped, or never opened): `Down` once per outage.
    pub fn closed(&mut self, now: Instant) -> Vec<Output> {
        self.phase = Phase::Closed;
        self.connected_at = None;
        self.heartbeat_sent = None;
        if self.lost_at.is_none() {
            self.lost_at = Some(now);
        }
        if std::mem::take(&mut self.announced_live) {
            vec![Output::Notice(LiveNotice::Down)]
        } else {
            Vec::new()
        }
    }

    /// A frame other than text arrived (ping, pong): traffic all the same.
    pub fn on_traffic(&mut self, now: Instant) {
        self.last_rx = now;
        self.heartbeat_sent = None;
    }

    /// Whether a subscription request is out and not yet answered.
    pub fn subscribing(&self) -> bool {
        matches!(self.phase, Phase::Subscribing { .. })
    }

    /// A best-effort `DELETE` of the subscription, for a clean stop.
    pub fn goodbye(&mut self) -> Option<String> {
        let id = self.subscription_id.take()?;
        self.phase = Phase::Closed;
        Some(
            json!([{"type": "ClientRequest", "messageId": uuid_v4(), "method": "DELETE",
                "path": format!("{SUBSCRIPTION_PATH}/{id}")}])
            .to_string(),
        )
    }

    /// When [`Protocol::on_tick`] next has something to do; `None` without a connection.
    pub fn deadline(&self) -> Option<Instant> {
        let handshake = match &self.phase {
            Phase::Closed => return None,
            Phase::AwaitDetails { since } => return Some(*since + self.timing.handshake_timeout),
            Phase::Subscribing { since, .. } => Some(*since + self.timing.handshake_timeout),
            Phase::Live => None,
        };
        let heartbeat = match self.heartbeat_sent {
            Some(t) => t + self.timing.heartbeat_timeout,
            None => self.last_rx.min(self.last_tx) + self.timing.heartbeat,
        };
        let renew = self.connected_at.map(|t| t + self.replace_after());
        [handshake, Some(heartbeat), renew]
            .into_iter()
            .flatten()
            .min()
    }

    /// How old a connection may get before it is replaced: `absoluteTimeout` less a tenth
    /// (at most a minute), so the replacement happens before the server's close.
    fn replace_after(&self) -> Duration {
        let a = self.limits.absolute_timeout;
        a - (a / 10).min(Duration::from_secs(60))
    }

    /// The clock moved: heartbeats, and the timeouts.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Output> {
        let reconnect = |why: &str, immediate| {
            vec![Output::Reconnect {
                why: why.to_owned(),
                immediate,
            }]
        };
        match &self.phase {
            Phase::Closed => return Vec::new(),
            Phase::AwaitDetails { since } => {
                if now >= *since + self.timing.handshake_timeout {
                    return reconnect("no ConnectionDetails from the server", false);
                }
                return Vec::new();
            }
            Phase::Subscribing { since, .. } => {
                if now >= *since + self.timing.handshake_timeout {
                    return reconnect("no answer to the subscription request", false);
                }
            }
            Phase::Live => {}
        }
        if let Some(t) = self.connected_at
            && now >= t + self.replace_after()
        {
            return reconnect("the connection nears its absolute timeout", true);
        }
        match self.heartbeat_sent {
            Some(t) if now >= t + self.timing.heartbeat_timeout => {
                reconnect("the server did not answer a heartbeat", false)
            }
            Some(_) => Vec::new(),
            None if now >= self.last_rx.min(self.last_tx) + self.timing.heartbeat => {
                self.heartbeat_sent = Some(now);
                self.last_tx = now;
                vec![
                    Output::Send(
                        json!([{"type": "Heartbeat", "messageId": uuid_v4()}]).to_string(),
                    ),
                    Output::Ping,
                ]
            }
            None => Vec::new(),
        }
    }

    /// A text frame arrived.
    pub fn on_text(&mut self, text: &str, now: Instant) -> Vec<Output> {
        self.on_traffic(now);
        if self.phase == Phase::Closed {
            return Vec::new();
        }
        let Ok(Value::Array(parts)) = serde_json::from_str::<Value>(text) else {
            tracing::debug!("events: ignoring a frame that is not a [header, body] array");
            return Vec::new();
        };
        let Some(header) = parts.first().filter(|h| h.is_object()) else {
            tracing::debug!("events: ignoring a frame without a header");
            return Vec::new();
        };
        let body = parts.get(1);
        let kind = header.get("type").and_then(Value::as_str).unwrap_or("");
        self.note_wsc(header, kind == "ConnectionDetails");
        match kind {
            "ConnectionDetails" => self.on_details(header, body, now),
            "ClientRequest" => self.on_answer(header, body),
            "ServerNotification" => self.on_notification(body),
            "Error" => self.on_error(header, body),
            "Heartbeat" => Vec::new(),
            other => {
                tracing::debug!(kind = other, "events: ignoring a message of unknown type");
                Vec::new()
            }
        }
    }

    fn note_wsc(&mut self, header: &Value, restart: bool) {
        let Some(w) = header.get("wsc") else { return };
        let Some(token) = str_of(w.get("token")) else {
            return;
        };
        let sequence = u64_of(w.get("sequence")).unwrap_or(0);
        if restart || self.wsc.as_ref().is_none_or(|old| sequence > old.sequence) {
            self.wsc = Some(Wsc { token, sequence });
        }
    }

    fn on_details(&mut self, header: &Value, body: Option<&Value>, now: Instant) -> Vec<Output> {
        let field = |name: &str| {
            body.and_then(|b| b.get(name))
                .or_else(|| header.get(name))
                .cloned()
        };
        let secs = |name: &str| {
            u64_of(field(name).as_ref())
                .filter(|s| *s > 0)
                .map(Duration::from_secs)
        };
        let d = Limits::default();
        self.limits = Limits {
            recovery_timeout: secs("recoveryTimeout").unwrap_or(d.recovery_timeout),
            idle_timeout: secs("idleTimeout").unwrap_or(d.idle_timeout),
            absolute_timeout: secs("absoluteTimeout").unwrap_or(d.absolute_timeout),
        };
        if !matches!(self.phase, Phase::AwaitDetails { .. }) {
            return Vec::new();
        }
        if std::mem::take(&mut self.recovering) {
            let state = field("recoveryState");
            if state.as_ref().and_then(Value::as_str) == Some("Successful") {
                tracing::info!(filter = %self.filter, "event subscription recovered; no events missed");
                return self.go_live(false);
            }
            let code = str_of(field("recoveryErrorCode").as_ref());
            tracing::info!(
                code = code.as_deref().unwrap_or("none"),
                "event session not recovered; subscribing again"
            );
            self.subscription_id = None;
        }
        self.subscribe(now)
    }

    fn subscribe(&mut self, now: Instant) -> Vec<Output> {
        let message_id = uuid_v4();
        let frame = json!([
            {"type": "ClientRequest", "messageId": message_id, "method": "POST",
                "path": SUBSCRIPTION_PATH},
            {"eventFilters": [self.filter], "deliveryMode": {"transportType": "WebSocket"}}
        ])
        .to_string();
        self.phase = Phase::Subscribing {
            message_id,
            since: now,
        };
        self.last_tx = now;
        vec![Output::Send(frame)]
    }

    fn go_live(&mut self, gap: bool) -> Vec<Output> {
        self.phase = Phase::Live;
        self.lost_at = None;
        self.announced_live = true;
        vec![Output::Notice(LiveNotice::Live { gap })]
    }

    fn on_answer(&mut self, header: &Value, body: Option<&Value>) -> Vec<Output> {
        let Phase::Subscribing { message_id, .. } = &self.phase else {
            tracing::debug!("events: ignoring an answer to no pending request");
            return Vec::new();
        };
        let sub_header = header.get("headers").and_then(|h| {
            h.get("WSG-SubscriptionId")
                .or_else(|| h.get("wsg-subscriptionid"))
        });
        let same_id = header.get("messageId").and_then(Value::as_str) == Some(message_id.as_str());
        if !same_id && sub_header.is_none() {
            tracing::debug!("events: ignoring an answer to another request");
            return Vec::new();
        }
        let status = u64_of(header.get("status"));
        if status.is_none_or(|s| (200..300).contains(&s)) {
            let id = body
                .and_then(|b| str_of(b.get("id")))
                .or_else(|| str_of(sub_header));
            self.subscription_id = id;
            if std::mem::replace(&mut self.ever_subscribed, true) {
                tracing::info!(filter = %self.filter, "subscribed to events again; events in the gap are learned from the call log");
            } else {
                tracing::info!(filter = %self.filter, "subscribed to events");
            }
            return self.go_live(true);
        }
        self.subscription_id = None;
        let (code, message) = error_of(&Value::Null, body);
        self.refused(status, code, message, "subscription")
    }

    fn refused(
        &mut self,
        status: Option<u64>,
        code: Option<String>,
        message: String,
        what: &str,
    ) -> Vec<Output> {
        let detail = describe(status, &code, &message);
        if is_permission_error(status, code.as_deref(), &message) {
            return vec![
                Output::Notice(LiveNotice::Unavailable(format!(
                    "the event {what} was refused ({detail}); the app needs the \
                     CallControl permission for telephony session events and the \
                     WebSocket Subscriptions permission"
                ))),
                Output::Stop,
            ];
        }
        vec![Output::Reconnect {
            why: format!("the event {what} was refused ({detail})"),
            immediate: false,
        }]
    }

    fn on_notification(&mut self, body: Option<&Value>) -> Vec<Output> {
        let Some(body) = body.filter(|b| b.is_object()) else {
            return Vec::new();
        };
        if let (Some(ours), Some(theirs)) = (
            self.subscription_id.as_deref(),
            str_of(body.get("subscriptionId")),
        ) && ours != theirs
        {
            tracing::debug!("events: ignoring an event of another subscription");
            return Vec::new();
        }
        let event = match SessionEvent::from_json(body) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!("events: ignoring an event: {e}");
                return Vec::new();
            }
        };
        let key = str_of(body.get("uuid")).map(Key::Uuid).or_else(|| {
            event
                .sequence
                .map(|s| Key::Sequence(event.session_id.to_string(), s))
        });
        if let Some(k) = key
            && !self.seen.insert(k)
        {
            tracing::debug!(session = %event.session_id, "events: dropping a replayed event");
            return Vec::new();
        }
        vec![Output::Notice(LiveNotice::Event(event))]
    }

    fn on_error(&mut self, header: &Value, body: Option<&Value>) -> Vec<Output> {
        let (code, message) = error_of(header, body);
        let status = u64_of(header.get("status"));
        match &self.phase {
            Phase::AwaitDetails { .. } => {
                // The connection was refused: a recovery token the server no longer knows
                // must not be offered again.
                if std::mem::take(&mut self.recovering) {
                    self.wsc = None;
                    self.subscription_id = None;
                }
                return self.refused(status, code, message, "connection");
            }
            Phase::Subscribing { message_id, .. }
                if header.get("messageId").and_then(Value::as_str) == Some(message_id) =>
            {
                self.subscription_id = None;
                return self.refused(status, code, message, "subscription");
            }
            _ => {}
        }
        let detail = describe(status, &code, &message);
        match code.as_deref() {
            Some("WSG-902") => vec![Output::Reconnect {
                why: format!("the server closed the idle connection ({detail})"),
                immediate: true,
            }],
            Some("WSG-903") => vec![Output::Reconnect {
                why: format!("the server closed the old connection ({detail})"),
                immediate: true,
            }],
            _ if is_permission_error(status, code.as_deref(), &message) => {
                self.refused(status, code, message, "connection")
            }
            _ => vec![Output::Reconnect {
                why: format!("the server reported an error ({detail})"),
                immediate: false,
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILTER: &str = "/restapi/v1.0/account/~/extension/~/telephony/sessions";

    fn timing() -> Timing {
        Timing {
            heartbeat: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }

    fn details(token: &str, seq: u64, recovery: Option<&str>) -> String {
        let mut body = json!({"recoveryTimeout": 180, "idleTimeout": 1800,
            "absoluteTimeout": 86400, "maxActiveRequests": 10});
        if let Some(r) = recovery {
            body["recoveryState"] = json!(r);
        }
        json!([{"type": "ConnectionDetails", "messageId": "m0", "status": 200,
            "wsc": {"token": token, "sequence": seq}, "headers": {}}, body])
        .to_string()
    }

    fn sent(out: &[Output]) -> Vec<Value> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(s) => Some(serde_json::from_str(s).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn notices(out: &[Output]) -> Vec<LiveNotice> {
        out.iter()
            .filter_map(|o| match o {
                Output::Notice(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }

    fn answer(message_id: &Value, status: u16, body: Value) -> String {
        json!([{"type": "ClientRequest", "messageId": message_id, "status": status,
            "headers": {"WSG-SubscriptionId": "sub-1"}, "wsc": {"token": "t1", "sequence": 2}},
            body])
        .to_string()
    }

    fn event(uuid: Option<&str>, session: &str, seq: u64) -> String {
        let mut env = json!({"event": FILTER, "subscriptionId": "sub-1",
            "body": {"sessionId": session, "sequence": seq, "telephonySessionId": "s-1",
                "parties": [{"status": {"code": "Answered"}}]}});
        if let Some(u) = uuid {
            env["uuid"] = json!(u);
        }
        json!([{"type": "ServerNotification", "messageId": "n", "status": 200,
            "wsc": {"token": "t2", "sequence": 3 + seq}}, env])
        .to_string()
    }

    /// A protocol that has subscribed, and the time.
    fn live() -> (Protocol, Instant) {
        let t0 = Instant::now();
        let mut p = Protocol::new(FILTER, timing());
        assert_eq!(p.begin(t0), None, "nothing to recover at first");
        p.opened(t0);
        assert!(
            p.on_tick(t0).is_empty(),
            "nothing is sent before ConnectionDetails"
        );
        let out = p.on_text(&details("t0", 1, None), t0);
        let req = sent(&out);
        assert_eq!(req.len(), 1);
        let h = &req[0][0];
        assert_eq!(h["type"], "ClientRequest");
        assert_eq!(h["method"], "POST");
        assert_eq!(h["path"], "/restapi/v1.0/subscription");
        let id = h["messageId"].as_str().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4", "a v4 uuid: {id}");
        assert_eq!(req[0][1]["eventFilters"], json!([FILTER]));
        assert_eq!(req[0][1]["deliveryMode"]["transportType"], "WebSocket");
        let out = p.on_text(
            &answer(
                &h["messageId"],
                200,
                json!({"id": "sub-1", "status": "Active"}),
            ),
            t0,
        );
        assert_eq!(notices(&out), vec![LiveNotice::Live { gap: true }]);
        assert_eq!(p.subscription_id(), Some("sub-1"));
        assert!(p.is_live());
        (p, t0)
    }

    #[test]
    fn subscribes_after_details_and_goes_live_with_a_gap() {
        let (p, _) = live();
        assert_eq!(
            p.wsc().unwrap().token,
            "t1",
            "the answer's newer wsc is kept"
        );
        assert_eq!(p.limits(), Limits::default());
    }

    #[test]
    fn events_are_delivered_once() {
        let (mut p, t) = live();
        let out = p.on_text(&event(Some("u1"), "42", 1), t);
        let n = notices(&out);
        let LiveNotice::Event(e) = &n[0] else {
            panic!("{n:?}")
        };
        assert_eq!(e.session_id.as_str(), "42");
        assert_eq!(e.sequence, Some(1));
        assert!(notices(&p.on_text(&event(Some("u1"), "42", 1), t)).is_empty());
        // Without a uuid the (session, sequence) pair is the key.
        assert_eq!(notices(&p.on_text(&event(None, "43", 1), t)).len(), 1);
        assert!(notices(&p.on_text(&event(None, "43", 1), t)).is_empty());
        assert_eq!(notices(&p.on_text(&event(None, "43", 2), t)).len(), 1);
        assert_eq!(p.wsc().unwrap().sequence, 5, "the highest sequence wins");
        // Another subscription's events and non-telephony bodies are ignored.
        let other = event(Some("u9"), "44", 1).replace("sub-1", "sub-other");
        assert!(p.on_text(&other, t).is_empty());
        let junk = json!([{"type": "ServerNotification"}, {"body": {"x": 1}}]).to_string();
        assert!(p.on_text(&junk, t).is_empty());
        for garbage in ["", "{}", "[]", "[1]", "not json"] {
            assert!(p.on_text(garbage, t).is_empty(), "{garbage}");
        }
    }

    #[test]
    fn dedup_memory_is_bounded() {
        let (mut p, t) = live();
        for i in 0..(SEEN_CAP as u64 + 10) {
            assert_eq!(notices(&p.on_text(&event(None, "1", i), t)).len(), 1);
        }
        assert_eq!(p.seen.order.len(), SEEN_CAP);
        assert_eq!(p.seen.set.len(), SEEN_CAP);
        // The oldest were forgotten, the newest are known.
        assert!(notices(&p.on_text(&event(None, "1", SEEN_CAP as u64 + 9), t)).is_empty());
    }

    #[test]
    fn an_older_wsc_does_not_replace_a_newer_one() {
        let (mut p, t) = live();
        p.on_text(&event(Some("a"), "1", 5), t);
        assert_eq!(p.wsc().unwrap().sequence, 8);
        let old = json!([{"type": "Heartbeat", "wsc": {"token": "old", "sequence": 4}}]);
        p.on_text(&old.to_string(), t);
        assert_eq!(p.wsc().unwrap().token, "t2");
    }

    #[test]
    fn a_loss_is_down_once_and_a_successful_recovery_is_live_without_a_gap() {
        let (mut p, t) = live();
        p.on_text(&event(Some("u1"), "42", 1), t);
        assert_eq!(notices(&p.closed(t)), vec![LiveNotice::Down]);
        // A failed attempt is no second Down.
        assert_eq!(p.begin(t), Some("t2".into()));
        assert!(p.closed(t).is_empty());
        let t1 = t + Duration::from_secs(5);
        assert_eq!(p.begin(t1), Some("t2".into()), "the newest token");
        p.opened(t1);
        let out = p.on_text(&details("t3", 1, Some("Successful")), t1);
        assert_eq!(notices(&out), vec![LiveNotice::Live { gap: false }]);
        assert!(sent(&out).is_empty(), "no new subscription");
        assert_eq!(p.wsc().unwrap().token, "t3", "details restart the sequence");
        // The replay: the delivered event is dropped, the missed one goes through.
        assert!(notices(&p.on_text(&event(Some("u1"), "42", 1), t1)).is_empty());
        assert_eq!(
            notices(&p.on_text(&event(Some("u2"), "42", 2), t1)).len(),
            1
        );
    }

    #[test]
    fn a_failed_recovery_subscribes_again_with_a_gap() {
        let (mut p, t) = live();
        p.closed(t);
        assert!(p.begin(t).is_some());
        p.opened(t);
        // `recoveryState` in the header is accepted too.
        let d = json!([{"type": "ConnectionDetails", "recoveryState": "Failed",
            "wsc": {"token": "n", "sequence": 1}}, {"recoveryErrorCode": "WSG-1005"}]);
        let out = p.on_text(&d.to_string(), t);
        let req = sent(&out);
        assert_eq!(req[0][0]["method"], "POST");
        assert_eq!(p.subscription_id(), None);
        let out = p.on_text(
            &answer(&req[0][0]["messageId"], 200, json!({"id": "sub-2"})),
            t,
        );
        assert_eq!(notices(&out), vec![LiveNotice::Live { gap: true }]);
        assert_eq!(p.subscription_id(), Some("sub-2"));
    }

    #[test]
    fn no_recovery_after_the_recovery_timeout() {
        let (mut p, t) = live();
        p.closed(t);
        assert_eq!(p.begin(t + Duration::from_secs(181)), None);
        p.opened(t);
        let out = p.on_text(&details("x", 1, None), t);
        assert_eq!(sent(&out).len(), 1, "a fresh subscription");
    }

    #[test]
    fn the_answer_is_found_by_message_id_or_subscription_header() {
        let t = Instant::now();
        let mut p = Protocol::new(FILTER, timing());
        p.opened(t);
        let req = sent(&p.on_text(&details("t0", 1, None), t));
        // An answer to something else entirely is ignored.
        let other = json!([{"type": "ClientRequest", "messageId": "nope", "status": 200}, {}]);
        assert!(p.on_text(&other.to_string(), t).is_empty());
        // The Python SDK's way: the WSG-SubscriptionId header.
        let by_header = answer(&json!("different"), 200, json!({}));
        assert_eq!(
            notices(&p.on_text(&by_header, t)),
            vec![LiveNotice::Live { gap: true }]
        );
        assert_eq!(p.subscription_id(), Some("sub-1"), "the id from the header");
        assert!(req[0][0]["messageId"].is_string());
    }

    #[test]
    fn a_permission_refusal_is_unavailable_and_other_refusals_reconnect() {
        for (status, body, unavailable) in [
            (
                403,
                json!({"errorCode": "CMN-401", "message": "In order to call this API endpoint, application needs to have [CallControl] permission"}),
                true,
            ),
            (
                400,
                json!({"errors": [{"errorCode": "CMN-408", "message": "x"}]}),
                true,
            ),
            (
                400,
                json!({"errorCode": "SUB-528", "message": "Too many subscriptions"}),
                false,
            ),
            (503, json!({}), false),
        ] {
            let t = Instant::now();
            let mut p = Protocol::new(FILTER, timing());
            p.opened(t);
            let req = sent(&p.on_text(&details("t0", 1, None), t));
            let out = p.on_text(&answer(&req[0][0]["messageId"], status, body.clone()), t);
            if unavailable {
                let LiveNotice::Unavailable(why) = &notices(&out)[0] else {
                    panic!("{out:?}")
                };
                assert!(why.contains(&status.to_string()), "{why}");
                assert!(why.contains("CallControl"), "{why}");
                assert_eq!(out.last(), Some(&Output::Stop));
            } else {
                assert!(
                    matches!(&out[..], [Output::Reconnect { immediate: false, why }] if why.contains(&status.to_string())),
                    "{body}: {out:?}"
                );
            }
            assert_eq!(p.subscription_id(), None);
        }
    }

    #[test]
    fn heartbeats_after_silence_and_a_silent_server_is_a_loss() {
        let (mut p, t) = live();
        assert_eq!(p.deadline(), Some(t + Duration::from_secs(30)));
        assert!(p.on_tick(t + Duration::from_secs(29)).is_empty());
        let t30 = t + Duration::from_secs(30);
        let hb = sent(&p.on_tick(t30));
        assert_eq!(hb.len(), 1);
        assert_eq!(hb[0][0]["type"], "Heartbeat");
        assert!(hb[0][0]["messageId"].is_string());
        assert_eq!(p.deadline(), Some(t30 + Duration::from_secs(10)));
        // An answer resets the clock.
        let pong = json!([{"type": "Heartbeat", "messageId": hb[0][0]["messageId"]}]).to_string();
        p.on_text(&pong, t30 + Duration::from_secs(1));
        assert!(p.on_tick(t30 + Duration::from_secs(12)).is_empty());
        let t61 = t30 + Duration::from_secs(31);
        assert_eq!(sent(&p.on_tick(t61)).len(), 1);
        let out = p.on_tick(t61 + Duration::from_secs(10));
        assert!(
            matches!(
                &out[..],
                [Output::Reconnect {
                    immediate: false,
                    ..
                }]
            ),
            "{out:?}"
        );
    }

    #[test]
    fn traffic_in_only_one_direction_still_heartbeats() {
        let (mut p, t) = live();
        // Events keep coming, but we send nothing: the server's idle clock may be ours.
        for s in 1..=30 {
            p.on_text(
                &event(Some(&format!("e{s}")), "1", s),
                t + Duration::from_secs(s),
            );
        }
        assert_eq!(sent(&p.on_tick(t + Duration::from_secs(30))).len(), 1);
    }

    #[test]
    fn handshake_timeouts() {
        let t = Instant::now();
        let mut p = Protocol::new(FILTER, timing());
        p.opened(t);
        assert_eq!(p.deadline(), Some(t + Duration::from_secs(10)));
        assert!(matches!(
            &p.on_tick(t + Duration::from_secs(10))[..],
            [Output::Reconnect { .. }]
        ));
        p.opened(t);
        p.on_text(&details("a", 1, None), t);
        assert!(matches!(
            &p.on_tick(t + Duration::from_secs(10))[..],
            [Output::Reconnect { .. }]
        ));
    }

    #[test]
    fn the_connection_is_replaced_before_its_absolute_timeout() {
        let t = Instant::now();
        let mut p = Protocol::new(FILTER, timing());
        p.opened(t);
        let d = json!([{"type": "ConnectionDetails", "wsc": {"token": "a", "sequence": 1}},
            {"absoluteTimeout": 100, "idleTimeout": 50, "recoveryTimeout": 20}]);
        let req = sent(&p.on_text(&d.to_string(), t));
        p.on_text(&answer(&req[0][0]["messageId"], 200, json!({"id": "s"})), t);
        assert_eq!(p.limits().absolute_timeout, Duration::from_secs(100));
        assert_eq!(p.limits().recovery_timeout, Duration::from_secs(20));
        // Keep the heartbeat quiet with traffic both ways, then reach 90 s (100 less a tenth).
        for s in (25..=75).step_by(25) {
            let at = t + Duration::from_secs(s);
            p.on_text("[{\"type\":\"Heartbeat\"}]", at);
            p.last_tx = at;
        }
        assert!(p.on_tick(t + Duration::from_secs(89)).is_empty());
        let out = p.on_tick(t + Duration::from_secs(90));
        assert!(
            matches!(
                &out[..],
                [Output::Reconnect {
                    immediate: true,
                    ..
                }]
            ),
            "{out:?}"
        );
    }

    #[test]
    fn server_errors_lead_to_reconnects() {
        for (code, immediate) in [("WSG-902", true), ("WSG-903", true), ("WSG-500", false)] {
            let (mut p, t) = live();
            let e = json!([{"type": "Error", "messageId": "e", "status": 400},
                {"errorCode": code, "message": "closing"}]);
            let out = p.on_text(&e.to_string(), t);
            assert!(
                matches!(&out[..], [Output::Reconnect { immediate: i, why }] if *i == immediate && why.contains(code)),
                "{code}: {out:?}"
            );
        }
    }

    #[test]
    fn a_refused_connection_forgets_the_recovery_token() {
        let (mut p, t) = live();
        p.closed(t);
        assert!(p.begin(t).is_some());
        p.opened(t);
        let e = json!([{"type": "Error", "status": 400}, {"errorCode": "WSG-1003"}]);
        assert!(matches!(
            &p.on_text(&e.to_string(), t)[..],
            [Output::Reconnect { .. }]
        ));
        p.closed(t);
        assert_eq!(p.begin(t), None);
        // A refusal for a missing permission ends the feed.
        p.opened(t);
        let e = json!([{"type": "Error", "status": 403},
            {"errors": [{"errorCode": "CMN-401", "message": "needs WebSocketSubscriptions permission"}]}]);
        let out = p.on_text(&e.to_string(), t);
        assert!(matches!(&notices(&out)[..], [LiveNotice::Unavailable(_)]));
        assert_eq!(out.last(), Some(&Output::Stop));
    }

    #[test]
    fn goodbye_deletes_the_subscription() {
        let (mut p, _) = live();
        let bye: Value = serde_json::from_str(&p.goodbye().unwrap()).unwrap();
        assert_eq!(bye[0]["method"], "DELETE");
        assert_eq!(bye[0]["path"], "/restapi/v1.0/subscription/sub-1");
        assert_eq!(p.goodbye(), None);
    }
}
