//! WebSocket notifications: the `wstoken` endpoint, the socket at its `uri`, and the ticker that
//! delivers telephony session events as calls go on.
//!
//! The protocol follows the contract's "The WebSocket protocol":
//! - `POST /restapi/oauth/wstoken` (Auth group, Bearer token) issues a single-use
//!   `ws_access_token` for `ws://HOST/ws` that expires after [`Notifications::wstoken_ttl`].
//! - `GET /ws?access_token=T[&wsc=W]` upgrades to a WebSocket. A bad token gets one `Error`
//!   message and a close frame. Otherwise the first message is `ConnectionDetails`, whose body
//!   announces the windows; with `wsc` it also tells `recoveryState`.
//! - Messages are JSON arrays `[header, body?]`. The client sends `Heartbeat`s (answered with a
//!   `Heartbeat`) and `ClientRequest`s for `/restapi/v1.0/subscription` (POST creates or
//!   replaces the one subscription of the session; GET, PUT and DELETE `/{id}` read, renew and
//!   remove it). Requests pass the same gate as HTTP ones (`rate`): Medium for create, Light for
//!   the others, with their `X-Rate-Limit-*` headers in the answer's `headers`.
//! - Events come as `ServerNotification`s. `ConnectionDetails` and every event carry
//!   `wsc: {token, sequence}`: the sequence counts the session's messages, and the token of a
//!   message names the session and that sequence.
//!
//! # Sessions and recovery
//! A connection belongs to a session ([`WsSession`]): the subscription, the message sequence
//! and the last [`Notifications::recovery_buffer_size`] events. The session outlives its
//! connection by [`Notifications::recovery_timeout`]; events go on being numbered and buffered
//! meanwhile. A new connection with `&wsc=W` (W the token of any message of the session) within
//! that window takes the session over (`recoveryState: "Successful"`): after its
//! `ConnectionDetails` it gets the buffered events numbered above W's sequence, oldest first,
//! then the live ones. Otherwise it gets `recoveryState: "Failed"` with a `recoveryErrorCode`
//! and a new session without a subscription.
//!
//! # Delivery
//! A ticker (every [`TICK`]) adds the calls that started (`advance_live`), schedules the steps of
//! every call it has not seen yet (`events::timeline`; for the calls of the initial data set only
//! the steps after the emulator's start), and hands each step that is due to every session whose
//! subscription has a matching filter.
//!
//! Lock order: `data` (read) before `Hub::inner` before `stats`; `Hub::schedule` and
//! `Hub::settings` are never held with another lock.

// Handlers answer `Result<_, Response>`: the error *is* the answer.
#![allow(clippy::result_large_err)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::Notifications;
use super::audio::mix64;
use super::data::OWNER_EXTENSION_ID;
use super::events::{Filter, Step, event_body, timeline};
use super::reply::{json_response, not_found, rc_error};
use super::state::{Group, Shared, State, bases, fmt_ms, lock, now_ms};

/// How often the ticker looks for due events.
pub(super) const TICK: Duration = Duration::from_millis(20);

/// The WebSocket server path on the API host.
pub(super) const WS_PATH: &str = "/ws";

/// One issued `ws_access_token`.
#[derive(Debug)]
struct WsToken {
    expires: Instant,
    /// The login (OAuth session) whose access token asked for it.
    login: u64,
}

/// A subscription of a session.
#[derive(Clone, Debug)]
struct Subscription {
    id: String,
    filters: Vec<Filter>,
    creation_ms: i64,
    /// When it was last created or renewed.
    renewed_ms: i64,
}

/// A message for a connection's writer.
#[derive(Debug)]
struct Out {
    text: String,
    /// A `ServerNotification` (counted in `Stats::ws_events_sent` once written).
    event: bool,
}

/// A connection session (see the module docs).
#[derive(Debug)]
struct WsSession {
    /// Names the session inside its `wsc` tokens.
    key: String,
    login: u64,
    subscription: Option<Subscription>,
    /// The `wsc.sequence` of the newest message.
    sequence: u64,
    /// The newest events: `(sequence, message)`.
    buffer: VecDeque<(u64, String)>,
    buffer_size: usize,
    recovery_timeout: Duration,
    /// The connection writing for it now: `(connection id, writer)`.
    conn: Option<(u64, mpsc::UnboundedSender<Out>)>,
    /// Since when it has had no connection.
    disconnected_at: Option<Instant>,
}

impl WsSession {
    fn expired(&self, now: Instant) -> bool {
        self.disconnected_at
            .is_some_and(|at| now >= at + self.recovery_timeout)
    }
}

#[derive(Debug, Default)]
struct HubInner {
    tokens: HashMap<String, WsToken>,
    sessions: HashMap<u64, WsSession>,
    next_id: u64,
}

/// A step waiting for its delivery time.
#[derive(Debug)]
struct Due {
    deliver_ms: i64,
    /// Tie-breaker: delivery order among steps due at the same millisecond.
    order: u64,
    call: usize,
    step: Step,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.deliver_ms, self.order) == (o.deliver_ms, o.order)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.deliver_ms, self.order).cmp(&(o.deliver_ms, o.order))
    }
}

#[derive(Debug, Default)]
struct Schedule {
    /// Calls `0..scanned` of `Data::calls` are scheduled.
    scanned: usize,
    order: u64,
    heap: BinaryHeap<Reverse<Due>>,
}

/// The notifications' state: tokens, sessions, the schedule of events, the settings.
pub(super) struct Hub {
    inner: Mutex<HubInner>,
    schedule: Mutex<Schedule>,
    settings: RwLock<Notifications>,
    /// Bumped to drop every connection abruptly.
    kill: watch::Sender<u64>,
    /// Calls `0..initial` are the initial data set (only their steps after start are sent).
    initial: usize,
    /// Numbers the ids and tokens of this module: its own counter, so that the seeded fault
    /// draws of `State::roll` do not depend on how many events were sent.
    ids: AtomicU64,
}

impl Hub {
    pub(super) fn new(settings: Notifications, initial: usize) -> Hub {
        Hub {
            inner: Mutex::new(HubInner::default()),
            schedule: Mutex::new(Schedule::default()),
            settings: RwLock::new(settings),
            kill: watch::channel(0).0,
            initial,
            ids: AtomicU64::new(0),
        }
    }
}

fn uuid_like(a: u64, b: u64) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFFF,
        b >> 48,
        b & 0xFFFF_FFFF_FFFF
    )
}

fn wsc_token(key: &str, sequence: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{key}:{sequence}"))
}

fn parse_wsc(token: &str) -> Option<(String, u64)> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (key, seq) = raw.split_once(':')?;
    Some((key.to_string(), seq.parse().ok()?))
}

/// `[header, body]` (or `[header]`) as the text of one message.
fn message(header: Value, body: Option<Value>) -> String {
    let v = match body {
        Some(b) => json!([header, b]),
        None => json!([header]),
    };
    v.to_string()
}

/// An `Error` message: `status`, and an RC error body with `code`.
fn error_message(message_id: &str, status: u16, code: &str, text: &str) -> String {
    message(
        json!({"type": "Error", "messageId": message_id, "status": status, "headers": {}}),
        Some(json!({"errorCode": code, "message": text,
                    "errors": [{"errorCode": code, "message": text}]})),
    )
}

/// 403 `CMN-401` for a missing app permission, in RingCentral's shape.
fn permission_error(permission: &str) -> Response {
    let message = format!(
        "In order to call this API endpoint, application needs to have [{permission}] permission"
    );
    json_response(
        StatusCode::FORBIDDEN,
        &json!({"errorCode": "InsufficientPermissions", "message": message,
                "errors": [{"errorCode": "CMN-401", "message": message, "permissionName": permission}],
                "permissionName": permission}),
    )
}

impl State {
    pub(super) fn notifications(&self) -> Notifications {
        self.ws
            .settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn set_notifications(&self, n: Notifications) {
        *self.ws.settings.write().unwrap_or_else(|e| e.into_inner()) = n;
    }

    pub(super) fn drop_ws_connections(&self) {
        self.ws.kill.send_modify(|g| *g += 1);
    }

    pub(super) fn ws_open_connections(&self) -> usize {
        lock(&self.ws.inner)
            .sessions
            .values()
            .filter(|s| s.conn.is_some())
            .count()
    }

    fn next_u64(&self) -> u64 {
        mix64(self.nonce ^ mix64(self.ws.ids.fetch_add(1, Ordering::Relaxed) ^ 0x0057_5353))
    }

    fn new_id(&self) -> String {
        uuid_like(self.next_u64(), self.next_u64())
    }

    /// Takes a `ws_access_token`: single use, so it is gone whether it is valid or not.
    fn take_ws_token(&self, token: Option<&str>) -> Result<u64, (&'static str, &'static str)> {
        let invalid = ("WSG-901", "Invalid or already used access token");
        let token = token.ok_or(invalid)?;
        let t = lock(&self.ws.inner).tokens.remove(token).ok_or(invalid)?;
        if Instant::now() >= t.expires {
            return Err(("WSG-904", "Access token expired"));
        }
        Ok(t.login)
    }

    /// A new session, registered with the connection `conn`.
    fn new_session(
        &self,
        inner: &mut HubInner,
        login: u64,
        conn: (u64, mpsc::UnboundedSender<Out>),
        n: &Notifications,
    ) -> u64 {
        inner.next_id += 1;
        let id = inner.next_id;
        inner.sessions.insert(
            id,
            WsSession {
                key: format!("{:016x}", mix64(self.nonce ^ id)),
                login,
                subscription: None,
                sequence: 0,
                buffer: VecDeque::new(),
                buffer_size: n.recovery_buffer_size,
                recovery_timeout: n.recovery_timeout,
                conn: Some(conn),
                disconnected_at: None,
            },
        );
        id
    }

    /// Opens the session of a new connection: a recovery when `wsc` names a live session of the
    /// same login that has a subscription, else a new one. Sends `ConnectionDetails` (and, for
    /// a recovery, the missed events) through the connection's writer. Returns the session id.
    fn open_session(
        &self,
        login: u64,
        wsc: Option<&str>,
        conn: (u64, mpsc::UnboundedSender<Out>),
        n: &Notifications,
    ) -> u64 {
        let now = Instant::now();
        let mut inner = lock(&self.ws.inner);
        inner.sessions.retain(|_, s| !s.expired(now));
        let recovered = wsc.map(|w| {
            let found = parse_wsc(w).and_then(|(key, seq)| {
                inner
                    .sessions
                    .iter()
                    .find(|(_, s)| s.key == key && seq <= s.sequence)
                    .map(|(id, s)| (*id, seq, s))
            });
            match found {
                None => Err("WSG-1001"),
                Some((_, _, s)) if s.login != login => Err("WSG-1003"),
                Some((_, _, s)) if s.subscription.is_none() => Err("WSG-1005"),
                Some((id, seq, _)) => Ok((id, seq)),
            }
        });
        let (id, replay_after, recovery) = match recovered {
            Some(Ok((id, seq))) => {
                let s = inner.sessions.get_mut(&id).expect("found above");
                // A connection still writing for the session loses it: its writer closes.
                s.conn = Some(conn);
                s.disconnected_at = None;
                (id, Some(seq), Some(Ok(())))
            }
            other => {
                let id = self.new_session(&mut inner, login, conn, n);
                (id, None, other.map(|r| r.map(|_| ())))
            }
        };
        let s = inner.sessions.get_mut(&id).expect("just opened");
        s.sequence += 1;
        let mut body = json!({
            "creationTime": fmt_ms(now_ms()),
            "maxConnectionsPerSession": n.max_connections_per_session,
            "recoveryBufferSize": s.buffer_size,
            "recoveryTimeout": s.recovery_timeout.as_secs(),
            "idleTimeout": n.idle_timeout.as_secs(),
            "absoluteTimeout": n.absolute_timeout.as_secs(),
            "maxActiveRequests": n.max_active_requests,
        });
        match recovery {
            Some(Ok(())) => body["recoveryState"] = json!("Successful"),
            Some(Err(code)) => {
                body["recoveryState"] = json!("Failed");
                body["recoveryErrorCode"] = json!(code);
            }
            None => {}
        }
        let header = json!({
            "type": "ConnectionDetails",
            "messageId": self.new_id(),
            "status": 200,
            "headers": {"RCRequestId": self.new_id()},
            "wsc": {"token": wsc_token(&s.key, s.sequence), "sequence": s.sequence},
        });
        let mut out = vec![Out {
            text: message(header, Some(body)),
            event: false,
        }];
        if let Some(after) = replay_after {
            out.extend(
                s.buffer
                    .iter()
                    .filter(|(seq, _)| *seq > after)
                    .map(|(_, text)| Out {
                        text: text.clone(),
                        event: true,
                    }),
            );
        }
        if let Some((_, tx)) = &s.conn {
            for o in out {
                let _ = tx.send(o);
            }
        }
        drop(inner);
        if matches!(recovery, Some(Ok(()))) {
            lock(&self.stats).ws_recoveries += 1;
        }
        id
    }

    /// The connection `conn` of session `id` ended.
    fn close_session_conn(&self, id: u64, conn: u64) {
        let mut inner = lock(&self.ws.inner);
        if let Some(s) = inner.sessions.get_mut(&id)
            && s.conn.as_ref().is_some_and(|(c, _)| *c == conn)
        {
            s.conn = None;
            s.disconnected_at = Some(Instant::now());
        }
    }

    fn subscription_json(&self, api: &str, sub: &Subscription, n: &Notifications) -> Value {
        let ttl = n.subscription_ttl.as_millis() as i64;
        json!({
            "uri": format!("{api}/restapi/v1.0/subscription/{}", sub.id),
            "id": sub.id,
            "creationTime": fmt_ms(sub.creation_ms),
            "status": "Active",
            "eventFilters": sub.filters.iter().map(|f| f.text.clone()).collect::<Vec<_>>(),
            "expirationTime": fmt_ms(sub.renewed_ms + ttl),
            "expiresIn": n.subscription_ttl.as_secs(),
            "deliveryMode": {"transportType": "WebSocket", "encryption": false},
        })
    }

    /// Answers one `ClientRequest` of session `id`: `(status, headers, body)`.
    async fn client_request(
        &self,
        id: u64,
        api: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, serde_json::Map<String, Value>, Option<Value>) {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        // RingCentral's Python SDK creates with a trailing slash.
        let path = match path.trim_end_matches('/') {
            "" => "/",
            p => p,
        };
        let n = self.notifications();
        let sub_id = path.strip_prefix("/restapi/v1.0/subscription/");
        let resp = match (method.to_ascii_uppercase().as_str(), path, sub_id) {
            ("POST", "/restapi/v1.0/subscription", _) => {
                self.gated("subscription-create", Group::Medium, || {
                    self.create_subscription(id, api, body, &n)
                })
            }
            ("GET", _, Some(sid)) => self.gated("subscription-get", Group::Light, || {
                self.with_subscription(id, sid, api, &n, |_| {})
            }),
            ("PUT", _, Some(sid)) => self.gated("subscription-renew", Group::Light, || {
                let filters = match body.map(parse_filters).transpose() {
                    Ok(f) => f,
                    Err(r) => return r,
                };
                self.with_subscription(id, sid, api, &n, |s| {
                    s.renewed_ms = now_ms();
                    if let Some(f) = filters {
                        s.filters = f;
                    }
                })
            }),
            ("DELETE", _, Some(sid)) => self.gated("subscription-delete", Group::Light, || {
                let mut inner = lock(&self.ws.inner);
                let Some(s) = inner.sessions.get_mut(&id) else {
                    return not_found("subscriptionId", sid);
                };
                if s.subscription.as_ref().is_none_or(|x| x.id != sid) {
                    return not_found("subscriptionId", sid);
                }
                s.subscription = None;
                axum::response::IntoResponse::into_response(StatusCode::NO_CONTENT)
            }),
            _ => not_found("path", path),
        };
        let status = resp.status().as_u16();
        let mut headers = serde_json::Map::new();
        for (k, v) in resp.headers() {
            if let Ok(v) = v.to_str() {
                headers.insert(canonical(k.as_str()), json!(v));
            }
        }
        headers.insert("RCRequestId".into(), json!(self.new_id()));
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        if (200..300).contains(&status)
            && let Some(sid) = body.as_ref().and_then(|b| b["id"].as_str())
        {
            headers.insert("WSG-SubscriptionId".into(), json!(sid));
        }
        (status, headers, body)
    }

    fn create_subscription(
        &self,
        id: u64,
        api: &str,
        body: Option<&Value>,
        n: &Notifications,
    ) -> Response {
        if let Some(p) = &n.refuse_subscription {
            return permission_error(p);
        }
        let Some(body) = body else {
            return rc_error(
                StatusCode::BAD_REQUEST,
                "CMN-101",
                "Parameter [eventFilters] value is invalid",
            );
        };
        let transport = body["deliveryMode"]["transportType"].as_str();
        if transport != Some("WebSocket") {
            return rc_error(
                StatusCode::BAD_REQUEST,
                "SUB-522",
                "Parameter [deliveryMode.transportType] must be [WebSocket] over a WebSocket",
            );
        }
        let filters = match parse_filters(body) {
            Ok(f) => f,
            Err(r) => return r,
        };
        let now = now_ms();
        let sub = Subscription {
            id: self.new_id(),
            filters,
            creation_ms: now,
            renewed_ms: now,
        };
        let mut inner = lock(&self.ws.inner);
        let Some(s) = inner.sessions.get_mut(&id) else {
            return not_found("session", &id.to_string());
        };
        // One subscription per session: a second one replaces the first.
        s.subscription = Some(sub.clone());
        drop(inner);
        lock(&self.stats).ws_subscriptions += 1;
        tracing::debug!(session = id, subscription = %sub.id, "subscribed");
        json_response(StatusCode::OK, &self.subscription_json(api, &sub, n))
    }

    fn with_subscription(
        &self,
        id: u64,
        sid: &str,
        api: &str,
        n: &Notifications,
        f: impl FnOnce(&mut Subscription),
    ) -> Response {
        let mut inner = lock(&self.ws.inner);
        let sub = inner
            .sessions
            .get_mut(&id)
            .and_then(|s| s.subscription.as_mut())
            .filter(|s| s.id == sid);
        let Some(sub) = sub else {
            return not_found("subscriptionId", sid);
        };
        f(sub);
        let sub = sub.clone();
        drop(inner);
        json_response(StatusCode::OK, &self.subscription_json(api, &sub, n))
    }

    /// Schedules the calls not scheduled yet and delivers the steps due by `now`.
    pub(super) fn ws_tick(&self, now: i64) {
        self.advance_live(now);
        let n = self.notifications();
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let due: Vec<Due> = {
            let mut sch = lock(&self.ws.schedule);
            let delay = n.delivery_delay.as_millis() as i64;
            while sch.scanned < data.calls.len() {
                let i = sch.scanned;
                sch.scanned += 1;
                let mut steps = timeline(&data.calls[i], &n);
                if i < self.ws.initial {
                    steps.retain(|s| s.at_ms > self.t0_ms);
                }
                // Out of order: each pair goes when its later step is due, later step first.
                let mut k = 0;
                while k < steps.len() {
                    let pair = if n.out_of_order {
                        (k + 2).min(steps.len())
                    } else {
                        k + 1
                    };
                    let at = steps[pair - 1].at_ms + delay;
                    for step in steps[k..pair].iter().rev() {
                        sch.order += 1;
                        let order = sch.order;
                        sch.heap.push(Reverse(Due {
                            deliver_ms: at,
                            order,
                            call: i,
                            step: step.clone(),
                        }));
                    }
                    k = pair;
                }
            }
            let mut due = Vec::new();
            while sch.heap.peek().is_some_and(|d| d.0.deliver_ms <= now) {
                due.push(sch.heap.pop().expect("peeked").0);
            }
            due
        };
        let mut inner = lock(&self.ws.inner);
        let instant = Instant::now();
        inner.sessions.retain(|_, s| !s.expired(instant));
        if due.is_empty() {
            return;
        }
        let timestamp = fmt_ms(now);
        for d in &due {
            let call = &data.calls[d.call];
            let body = event_body(call, &d.step);
            for s in inner.sessions.values_mut() {
                let Some(sub) = &s.subscription else {
                    continue;
                };
                let Some(f) = sub.filters.iter().find(|f| f.matches(call, &d.step)) else {
                    continue;
                };
                s.sequence += 1;
                let header = json!({
                    "type": "ServerNotification",
                    "messageId": self.new_id(),
                    "status": 200,
                    "headers": {"RCRequestId": self.new_id()},
                    "wsc": {"token": wsc_token(&s.key, s.sequence), "sequence": s.sequence},
                });
                let event = json!({
                    "uuid": self.new_id(),
                    "event": f.event_path(),
                    "timestamp": timestamp,
                    "subscriptionId": sub.id,
                    "ownerId": OWNER_EXTENSION_ID,
                    "body": body,
                });
                let text = message(header, Some(event));
                s.buffer.push_back((s.sequence, text.clone()));
                while s.buffer.len() > s.buffer_size {
                    s.buffer.pop_front();
                }
                if let Some((_, tx)) = &s.conn {
                    let _ = tx.send(Out { text, event: true });
                }
            }
        }
    }
}

/// `x-rate-limit-group` → `X-Rate-Limit-Group`.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn parse_filters(body: &Value) -> Result<Vec<Filter>, Response> {
    let Some(list) = body["eventFilters"].as_array().filter(|l| !l.is_empty()) else {
        return Err(rc_error(
            StatusCode::BAD_REQUEST,
            "CMN-101",
            "Parameter [eventFilters] value is invalid",
        ));
    };
    list.iter()
        .map(|f| {
            let text = f.as_str().unwrap_or_default();
            Filter::parse(text).ok_or_else(|| {
                rc_error(
                    StatusCode::BAD_REQUEST,
                    "SUB-521",
                    &format!("Event filter [{text}] is not supported"),
                )
            })
        })
        .collect()
}

/// `POST /restapi/oauth/wstoken`.
pub(super) async fn wstoken(AxState(st): AxState<Shared>, headers: HeaderMap) -> Response {
    lock(&st.stats).ws_tokens += 1;
    st.gated("wstoken", Group::Auth, || {
        let login = match st.authorize(&headers, None) {
            Ok(l) => l,
            Err(r) => return r,
        };
        let n = st.notifications();
        if let Some(p) = &n.refuse_wstoken {
            return permission_error(p);
        }
        let token = format!(
            "V1NDMDFQMDFXU1Qw{:016x}{:016x}",
            st.next_u64(),
            st.next_u64()
        );
        let mut inner = lock(&st.ws.inner);
        let now = Instant::now();
        inner.tokens.retain(|_, t| t.expires > now);
        inner.tokens.insert(
            token.clone(),
            WsToken {
                expires: Instant::now() + n.wstoken_ttl,
                login,
            },
        );
        drop(inner);
        let (api, _) = bases(&st, &headers);
        let ws_base = api.replacen("http://", "ws://", 1);
        json_response(
            StatusCode::OK,
            &json!({
                "uri": format!("{ws_base}{WS_PATH}"),
                "ws_access_token": token,
                "expires_in": n.wstoken_ttl.as_millis().div_ceil(1000).max(1) as u64,
            }),
        )
    })
}

/// `GET /ws?access_token=...[&wsc=...]`: the upgrade.
pub(super) async fn ws_upgrade(
    AxState(st): AxState<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let (api, _) = bases(&st, &headers);
    upgrade.on_upgrade(move |socket| async move {
        connection(st, api, params, socket).await;
    })
}

async fn send(socket: &mut WebSocket, text: String) -> bool {
    socket.send(Message::Text(text.into())).await.is_ok()
}

async fn close(mut socket: WebSocket, reason: &'static str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: reason.into(),
        })))
        .await;
    // Let the client read the close frame before the connection goes.
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.recv()).await;
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// One WebSocket connection, from the token check to its end.
async fn connection(
    st: Shared,
    api: String,
    params: HashMap<String, String>,
    mut socket: WebSocket,
) {
    lock(&st.stats).ws_connections += 1;
    let mut kill = st.ws.kill.subscribe();
    let login = match st.take_ws_token(params.get("access_token").map(String::as_str)) {
        Ok(l) => l,
        Err((code, text)) => {
            tracing::debug!(code, "websocket refused");
            let status = 401;
            if send(&mut socket, error_message(&st.new_id(), status, code, text)).await {
                close(socket, "unauthorized").await;
            }
            return;
        }
    };
    let n = st.notifications();
    let opened = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    let conn_id = st.next_u64();
    let session = st.open_session(
        login,
        params.get("wsc").map(String::as_str),
        (conn_id, tx),
        &n,
    );
    tracing::debug!(session, "websocket open");
    let absolute = opened + n.absolute_timeout;
    let drop_at = n.drop_after.map(|d| opened + d);
    let mut idle = opened + n.idle_timeout;
    let outcome: Option<(&str, &str)> = loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(o) => {
                    if !send(&mut socket, o.text).await {
                        break None;
                    }
                    if o.event {
                        lock(&st.stats).ws_events_sent += 1;
                    }
                }
                // Another connection recovered the session.
                None => break Some(("WSG-1006", "Session taken over by another connection")),
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => {
                    idle = Instant::now() + n.idle_timeout;
                    for answer in answer(&st, session, &api, t.as_str()).await {
                        if !send(&mut socket, answer).await {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => break None,
            },
            _ = tokio::time::sleep_until(idle.into()) => {
                break Some(("WSG-902", "Connection closed: idle timeout"));
            }
            _ = tokio::time::sleep_until(absolute.into()) => {
                break Some(("WSG-903", "Connection closed: absolute timeout"));
            }
            _ = sleep_until(drop_at) => {
                tracing::debug!(session, "websocket dropped (drop_after)");
                break None;
            }
            _ = kill.changed() => break None,
        }
    };
    st.close_session_conn(session, conn_id);
    if let Some((code, text)) = outcome {
        tracing::debug!(session, code, "websocket closed");
        if send(&mut socket, error_message(&st.new_id(), 400, code, text)).await {
            close(socket, "closed").await;
        }
    }
}

/// The answers to one client message.
async fn answer(st: &State, session: u64, api: &str, text: &str) -> Vec<String> {
    let parsed: Option<Vec<Value>> = serde_json::from_str(text).ok();
    let Some(parts) = parsed.filter(|p| !p.is_empty()) else {
        return vec![error_message(
            &st.new_id(),
            400,
            "WSG-101",
            "Message is not a JSON array [header, body]",
        )];
    };
    let header = &parts[0];
    let message_id = header["messageId"].as_str().unwrap_or_default().to_string();
    match header["type"].as_str() {
        Some("Heartbeat") => vec![message(
            json!({"type": "Heartbeat", "messageId": message_id, "status": 200, "headers": {}}),
            None,
        )],
        Some("ClientRequest") => {
            let method = header["method"].as_str().unwrap_or("GET");
            let path = header["path"].as_str().unwrap_or_default();
            let (status, headers, body) = st
                .client_request(session, api, method, path, parts.get(1))
                .await;
            vec![message(
                json!({"type": "ClientRequest", "messageId": message_id, "status": status,
                       "headers": headers}),
                body,
            )]
        }
        _ => vec![error_message(
            &message_id,
            400,
            "WSG-101",
            "Unknown message type",
        )],
    }
}

/// Delivers events until `stop` turns true.
pub(super) async fn ticker(st: Shared, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = interval.tick() => st.ws_tick(now_ms()),
        }
    }
    // Shutting down: no connection outlives the servers.
    st.drop_ws_connections();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wsc_tokens_round_trip() {
        let t = wsc_token("00ff", 42);
        assert_eq!(parse_wsc(&t), Some(("00ff".to_string(), 42)));
        assert_eq!(parse_wsc("not base64!"), None);
        assert_eq!(canonical("x-rate-limit-group"), "X-Rate-Limit-Group");
        assert_eq!(canonical("content-type"), "Content-Type");
    }
}
