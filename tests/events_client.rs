//! The live event feed ([`ringfs::api::spawn_events`]) against a small WebSocket server written
//! here from the API contract (`[header, body]` frames, `ConnectionDetails`, the subscription
//! `ClientRequest`, `ServerNotification`s, heartbeats, recovery with `&wsc=`), plus the two
//! OAuth endpoints it needs. Each test scripts the server side by hand, frame by frame.
//!
//! Durations are short so that the whole file runs in seconds; every wait is bounded so that a
//! failure is a failed assertion, not a hang.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use ringfs::api::{Client, ClientConfig, Credentials, EventsConfig, LiveNotice, Scope};

const WAIT: Duration = Duration::from_secs(5);

/// What the HTTP side does.
#[derive(Default)]
struct HttpState {
    /// `wstoken` requests answered.
    wstokens: AtomicU64,
    /// Answer `wstoken` with 403 (the app lacks the WebSocket permission).
    wstoken_forbidden: AtomicBool,
    /// Send no `X-Rate-Limit-*` headers, so the client keeps the contract's Auth limit (5 a
    /// minute); otherwise the headers allow 100, so that tests with many connections do not
    /// wait for the pacer.
    contract_limits: AtomicBool,
    /// The WebSocket server's URL.
    ws_url: Mutex<String>,
    /// Bearer tokens `wstoken` was called with.
    bearers: Mutex<Vec<String>>,
}

/// One accepted WebSocket connection, driven by the test.
struct Conn {
    /// The query of the URL the client connected to.
    query: HashMap<String, String>,
    ws: WebSocketStream<TcpStream>,
}

impl Conn {
    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next text frame the client sent.
    async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame from the client in time")
                .expect("the connection is open")
                .expect("a good frame");
            if let Message::Text(t) = m {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    }

    /// Sends `ConnectionDetails` with a recovery token and, when recovering, its result.
    async fn details(&mut self, wsc: &str, recovery: Option<&str>) {
        let mut body = json!({"creationTime": "2026-12-01T10:00:00Z", "maxConnectionsPerSession": 5,
            "recoveryBufferSize": 100, "recoveryTimeout": 180, "idleTimeout": 1800,
            "absoluteTimeout": 86400, "maxActiveRequests": 10});
        if let Some(r) = recovery {
            body["recoveryState"] = json!(r);
            if r == "Failed" {
                body["recoveryErrorCode"] = json!("WSG-1005");
            }
        }
        self.send(
            json!([{"type": "ConnectionDetails", "messageId": "cd-1", "status": 200,
            "headers": {}, "wsc": {"token": wsc, "sequence": 1}}, body]),
        )
        .await;
    }

    /// Reads the subscription request and answers it with `status` and `body`.
    async fn answer_subscription(&mut self, status: u16, body: Value) -> Value {
        let req = self.recv().await;
        let h = &req[0];
        assert_eq!(h["type"], "ClientRequest", "{req}");
        let mut headers = json!({"RCRequestId": "r-1"});
        if status == 200 {
            headers["WSG-SubscriptionId"] = body["id"].clone();
        }
        self.send(
            json!([{"type": "ClientRequest", "messageId": h["messageId"], "status": status,
            "headers": headers, "wsc": {"token": "wsc-after-sub", "sequence": 2}}, body]),
        )
        .await;
        req
    }

    /// A telephony event `uuid` of session `session`, carrying recovery token `wsc` at `seq`.
    async fn event(&mut self, uuid: &str, session: &str, status: &str, wsc: &str, seq: u64) {
        self.send(json!([
            {"type": "ServerNotification", "messageId": uuid, "status": 200,
                "headers": {"RCRequestId": "n"}, "wsc": {"token": wsc, "sequence": seq}},
            {"uuid": uuid, "event": "/restapi/v1.0/account/1/extension/2/telephony/sessions",
                "timestamp": "2026-12-01T10:00:01.000Z", "subscriptionId": "sub-1",
                "ownerId": "2",
                "body": {"sequence": seq, "sessionId": session, "telephonySessionId": "s-1",
                    "eventTime": "2026-12-01T10:00:00.500Z",
                    "parties": [{"id": "p-1", "extensionId": "2", "direction": "Inbound",
                        "from": {"phoneNumber": "+14155550100", "name": "John Smith"},
                        "to": {"phoneNumber": "+16505550100"},
                        "recordings": [{"id": "4444", "active": true}],
                        "status": {"code": status}}]}}
        ]))
        .await;
    }

    /// Goes through details and subscription; returns the subscription request.
    async fn subscribe(&mut self) -> Value {
        self.details("wsc-0", None).await;
        self.answer_subscription(
            200,
            json!({"id": "sub-1", "status": "Active",
            "eventFilters": ["x"], "deliveryMode": {"transportType": "WebSocket"}}),
        )
        .await
    }
}

struct Server {
    http: Arc<HttpState>,
    base: String,
    conns: mpsc::UnboundedReceiver<Conn>,
}

impl Server {
    async fn start() -> Server {
        use axum::{Router, http::HeaderMap, response::IntoResponse, routing::post};
        let http = Arc::new(HttpState::default());
        let limits = |st: &HttpState| {
            let mut h = HeaderMap::new();
            if !st.contract_limits.load(Ordering::SeqCst) {
                for (k, v) in [
                    ("x-rate-limit-group", "Auth"),
                    ("x-rate-limit-limit", "100"),
                    ("x-rate-limit-window", "60"),
                ] {
                    h.insert(k, v.parse().unwrap());
                }
            }
            h
        };
        let st = http.clone();
        let token = post(move || {
            let h = limits(&st);
            async move {
                (
                    h,
                    axum::Json(json!({"access_token": "acc-1", "token_type": "bearer",
                        "expires_in": 3600})),
                )
            }
        });
        let st = http.clone();
        let wstoken = post(move |headers: HeaderMap| {
            let st = st.clone();
            async move {
                let n = st.wstokens.fetch_add(1, Ordering::SeqCst) + 1;
                let bearer = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                st.bearers.lock().unwrap().push(bearer);
                let h = limits(&st);
                if st.wstoken_forbidden.load(Ordering::SeqCst) {
                    let body = json!({"errorCode": "CMN-401",
                        "message": "In order to call this API endpoint, application needs to have [WebSocketSubscriptions] permission",
                        "errors": [{"errorCode": "CMN-401", "message": "permission"}]});
                    return (axum::http::StatusCode::FORBIDDEN, h, axum::Json(body))
                        .into_response();
                }
                let uri = st.ws_url.lock().unwrap().clone();
                (
                    h,
                    axum::Json(json!({"ws_access_token": format!("wst-{n}"), "uri": uri,
                        "expires_in": 30})),
                )
                    .into_response()
            }
        });
        let app = Router::new()
            .route("/restapi/oauth/token", token)
            .route("/restapi/oauth/wstoken", wstoken);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

        let wl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        *http.ws_url.lock().unwrap() = format!("ws://{}/ws", wl.local_addr().unwrap());
        let (ctx, conns) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = wl.accept().await.unwrap();
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let seen = Arc::new(Mutex::new(String::new()));
                    let s = seen.clone();
                    // The result type is tungstenite's callback signature, not ours to shrink.
                    #[allow(clippy::result_large_err)]
                    let cb =
                        move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                              resp| {
                            *s.lock().unwrap() = req.uri().to_string();
                            Ok(resp)
                        };
                    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
                        return;
                    };
                    let uri = seen.lock().unwrap().clone();
                    let url = url::Url::parse(&format!("ws://h{uri}")).unwrap();
                    assert_eq!(url.path(), "/ws");
                    let query = url.query_pairs().into_owned().collect();
                    let _ = ctx.send(Conn { query, ws });
                });
            }
        });
        Server { http, base, conns }
    }

    fn client(&self) -> Client {
        let mut c = ClientConfig::new(Credentials {
            server_url: self.base.clone(),
            client_id: "id".into(),
            client_secret: "secret".into(),
            jwt: "jwt".into(),
        });
        c.backoff_base = Duration::from_millis(10);
        c.backoff_max = Duration::from_millis(50);
        c.max_retries = 1;
        Client::new(c).unwrap()
    }

    async fn conn(&mut self) -> Conn {
        tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .expect("the client connects in time")
            .unwrap()
    }

    fn wstokens(&self) -> u64 {
        self.http.wstokens.load(Ordering::SeqCst)
    }
}

/// Short settings; no heartbeat unless a test asks for one.
fn config() -> EventsConfig {
    EventsConfig {
        heartbeat: Duration::from_secs(30),
        heartbeat_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
    }
}

async fn next(rx: &mut mpsc::Receiver<LiveNotice>) -> LiveNotice {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a notice in time")
        .expect("the feed is running")
}

/// The feed ends by itself (after `Unavailable`).
async fn ends(h: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(WAIT, h)
        .await
        .expect("the feed ends")
        .unwrap();
}

#[tokio::test]
async fn subscribes_delivers_events_and_recovers_after_a_drop() {
    let mut srv = Server::start().await;
    let client = srv.client();
    let (tx, mut rx) = mpsc::channel(16);
    let _feed = ringfs::api::spawn_events(client.clone(), Scope::Extension, config(), tx);

    let mut c1 = srv.conn().await;
    assert_eq!(
        c1.query.get("access_token").map(String::as_str),
        Some("wst-1")
    );
    assert!(!c1.query.contains_key("wsc"), "nothing to recover yet");
    assert_eq!(srv.http.bearers.lock().unwrap()[0], "Bearer acc-1");
    let req = c1.subscribe().await;
    let (h, b) = (&req[0], &req[1]);
    assert_eq!(h["method"], "POST");
    assert_eq!(h["path"], "/restapi/v1.0/subscription");
    let id = h["messageId"].as_str().unwrap();
    assert!(
        id.len() == 36 && id.chars().filter(|c| *c == '-').count() == 4,
        "a uuid: {id}"
    );
    assert_eq!(
        b["eventFilters"],
        json!(["/restapi/v1.0/account/~/extension/~/telephony/sessions"])
    );
    assert_eq!(b["deliveryMode"]["transportType"], "WebSocket");
    assert_eq!(next(&mut rx).await, LiveNotice::Live { gap: true });

    c1.event("e-1", "1001", "Answered", "wsc-3", 3).await;
    let LiveNotice::Event(e) = next(&mut rx).await else {
        panic!("an event")
    };
    assert_eq!(e.session_id.as_str(), "1001");
    assert_eq!(e.telephony_session_id.as_deref(), Some("s-1"));
    assert_eq!(e.sequence, Some(3));
    assert_eq!(e.parties[0].status, "Answered");
    assert_eq!(e.parties[0].from.name.as_deref(), Some("John Smith"));
    assert_eq!(e.recording_ids()[0].as_str(), "4444");
    assert!(!e.ended());

    // The TCP connection drops without a close frame.
    drop(c1);
    assert_eq!(next(&mut rx).await, LiveNotice::Down);
    let mut c2 = srv.conn().await;
    assert_eq!(
        c2.query.get("access_token").map(String::as_str),
        Some("wst-2")
    );
    assert_eq!(
        c2.query.get("wsc").map(String::as_str),
        Some("wsc-3"),
        "the newest recovery token"
    );
    c2.details("wsc-r", Some("Successful")).await;
    assert_eq!(next(&mut rx).await, LiveNotice::Live { gap: false });
    // The replay holds the event already delivered and one that was missed.
    c2.event("e-1", "1001", "Answered", "wsc-r3", 3).await;
    c2.event("e-2", "1001", "Disconnected", "wsc-r4", 4).await;
    let LiveNotice::Event(e) = next(&mut rx).await else {
        panic!("an event")
    };
    assert_eq!(
        (e.sequence, e.ended()),
        (Some(4), true),
        "only the new event"
    );
    assert_eq!(srv.wstokens(), 2, "one wstoken per connection");
    assert_eq!(client.stats().requests("Auth"), 3, "login + two wstokens");
}

#[tokio::test]
async fn a_failed_recovery_subscribes_again_with_a_gap() {
    let mut srv = Server::start().await;
    let (tx, mut rx) = mpsc::channel(16);
    let _feed = ringfs::api::spawn_events(srv.client(), Scope::Account, config(), tx);
    let mut c1 = srv.conn().await;
    let req = c1.subscribe().await;
    assert_eq!(
        req[1]["eventFilters"],
        json!(["/restapi/v1.0/account/~/telephony/sessions"])
    );
    assert_eq!(next(&mut rx).await, LiveNotice::Live { gap: true });
    drop(c1);
    assert_eq!(next(&mut rx).await, LiveNotice::Down);
    let mut c2 = srv.conn().await;
    assert_eq!(
        c2.query.get("wsc").map(String::as_str),
        Some("wsc-after-sub")
    );
    c2.details("wsc-new", Some("Failed")).await;
    let req = c2
        .answer_subscription(200, json!({"id": "sub-2", "status": "Active"}))
        .await;
    assert_eq!(req[0]["method"], "POST", "a new subscription");
    assert_eq!(next(&mut rx).await, LiveNotice::Live { gap: true });
    assert_eq!(srv.wstokens(), 2);
}

#[tokio::test]
async fn a_subscription_refused_for_a_permission_is_unavailable() {
    let mut srv = Server::start().await;
    let (tx, mut rx) = mpsc::channel(16);
    let feed = ringfs::api::spawn_events(srv.client(), Scope::Extension, config(), tx);
    let mut c1 = srv.conn().await;
    c1.details("wsc-0", None).await;
    c1.answer_subscription(
        403,
        json!({"errorCode": "CMN-401", "message": "In order to call this API endpoint, application needs to have [CallControl] permission",
            "errors": [{"errorCode": "CMN-401", "message": "In order to call this API endpoint, application needs to have [CallControl] permission"}]}),
    )
    .await;
    let LiveNotice::Unavailable(why) = next(&mut rx).await else {
        panic!("unavailable")
    };
    assert!(
        why.contains("403") && why.contains("CMN-401") && why.contains("CallControl"),
        "{why}"
    );
    ends(feed).await;
    assert_eq!(srv.wstokens(), 1, "no retry");
}

#[tokio::test]
async fn a_forbidden_wstoken_is_unavailable() {
    let mut srv = Server::start().await;
    srv.http.wstoken_forbidden.store(true, Ordering::SeqCst);
    let (tx, mut rx) = mpsc::channel(16);
    let feed = ringfs::api::spawn_events(srv.client(), Scope::Extension, config(), tx);
    let LiveNotice::Unavailable(why) = next(&mut rx).await else {
        panic!("unavailable")
    };
    assert!(
        why.contains("403") && why.contains("WebSocket Subscriptions"),
        "{why}"
    );
    ends(feed).await;
    assert_eq!(srv.wstokens(), 1, "a 403 is not retried");
    assert!(srv.conns.try_recv().is_err(), "no connection was tried");
}

#[tokio::test]
async fn heartbeats_after_silence_and_a_silent_server_is_a_lost_connection() {
    let mut srv = Server::start().await;
    let cfg = EventsConfig {
        heartbeat: Duration::from_millis(300),
        heartbeat_timeout: Duration::from_millis(400),
        ..config()
    };
    let (tx, mut rx) = mpsc::channel(16);
    let _feed = ringfs::api::spawn_events(srv.client(), Scope::Extension, cfg, tx);
    let mut c1 = srv.conn().await;
    c1.subscribe().await;
    assert_eq!(next(&mut rx).await, LiveNotice::Live { gap: true });
    let quiet = tokio::time::Instant::now();
    let hb = c1.recv().await;
    assert!(
        quiet.elapsed() >= Duration::from_millis(250),
        "not before the interval: {:?}",
        quiet.elapsed()
    );
    assert_eq!(hb[0]["type"], "Heartbeat", "{hb}");
    assert!(hb[0]["messageId"].is_string());
    // Answered: the connection stays, and the next heartbeat follows the next silence.
    c1.send(json!([{"type": "Heartbeat", "messageId": hb[0]["messageId"], "status": 200}]))
        .await;
    let hb2 = c1.recv().await;
    assert_eq!(hb2[0]["type"], "Heartbeat");
    assert_ne!(hb2[0]["messageId"], hb[0]["messageId"]);
    // Not answered: the client gives the connection up and recovers on a new one.
    assert_eq!(next(&mut rx).await, LiveNotice::Down);
    let c2 = srv.conn().await;
    assert_eq!(
        c2.query.get("wsc").map(String::as_str),
        Some("wsc-after-sub")
    );
    drop(c1);
}

#[tokio::test]
async fn an_idle_close_error_reconnects_with_recovery() {
    let mut srv = Server::start().await;
    let (tx, mut rx) = mpsc::channel(16);
    let _feed = ringfs::api::spawn_events(srv.client(), Scope::Extension, config(), tx);
    let mut c1 = srv.conn().await;
    c1.subscribe().await;
    assert_eq!(next(&mut rx).await, LiveNotice::Live { gap: true });
    c1.send(
        json!([{"type": "Error", "messageId": "x", "status": 400, "headers": {}},
        {"errorCode": "WSG-902", "message": "Idle timeout exceeded"}]),
    )
    .await;
    assert_eq!(next(&mut rx).await, LiveNotice::Down);
    let mut c2 = srv.conn().await;
    assert_eq!(
        c2.query.get("wsc").map(String::as_str),
        Some("wsc-after-sub")
    );
    assert_eq!(
        c2.query.get("access_token").map(String::as_str),
        Some("wst-2")
    );
    c2.details("w", Some("Successful")).await;
    assert_eq!(next(&mut rx).await, LiveNotice::Live { gap: false });
    assert_eq!(srv.wstokens(), 2, "one wstoken per connection");
}

/// A server that accepts and drops every connection: the feed backs off, and its `wstoken`
/// requests stay within the Auth group's contract limit (5 a minute, one of them the login).
#[tokio::test]
async fn a_reconnect_storm_stays_within_the_auth_budget() {
    let mut srv = Server::start().await;
    srv.http.contract_limits.store(true, Ordering::SeqCst);
    let client = srv.client();
    let cfg = EventsConfig {
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        ..config()
    };
    let (tx, _rx) = mpsc::channel(16);
    let _feed = ringfs::api::spawn_events(client.clone(), Scope::Extension, cfg, tx);
    let mut accepted = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(c)) = tokio::time::timeout_at(until, srv.conns.recv()).await {
        accepted += 1;
        drop(c);
    }
    assert_eq!(srv.wstokens(), 4, "the pacer held the rest");
    assert_eq!(accepted, 4, "one connection per wstoken");
    assert_eq!(client.stats().requests("Auth"), 5);
}

/// A connection is replaced before the server's `absoluteTimeout` would end it, recovering the
/// session on the new one.
#[tokio::test]
async fn the_connection_is_replaced_before_its_absolute_timeout() {
    let mut srv = Server::start().await;
    let (tx, mut rx) = mpsc::channel(16);
    let _feed = ringfs::api::spawn_events(srv.client(), Scope::Extension, config(), tx);
    let mut c1 = srv.conn().await;
    c1.send(
        json!([{"type": "ConnectionDetails", "messageId": "cd", "status": 200,
        "wsc": {"token": "wsc-0", "sequence": 1}},
        {"recoveryTimeout": 180, "idleTimeout": 1800, "absoluteTimeout": 1}]),
    )
    .await;
    c1.answer_subscription(200, json!({"id": "sub-1"})).await;
    let opened = tokio::time::Instant::now();
    assert_eq!(next(&mut rx).await, LiveNotice::Live { gap: true });
    assert_eq!(next(&mut rx).await, LiveNotice::Down);
    let replaced = opened.elapsed();
    assert!(
        replaced < Duration::from_secs(1),
        "before the server's close: {replaced:?}"
    );
    let mut c2 = srv.conn().await;
    assert_eq!(
        c2.query.get("wsc").map(String::as_str),
        Some("wsc-after-sub")
    );
    c2.details("wsc-1", Some("Successful")).await;
    assert_eq!(next(&mut rx).await, LiveNotice::Live { gap: false });
}

#[tokio::test]
async fn a_server_that_answers_pings_but_not_heartbeats_keeps_the_connection() {
    let mut srv = Server::start().await;
    let cfg = EventsConfig {
        heartbeat: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_millis(300),
        ..config()
    };
    let (tx, mut rx) = mpsc::channel(16);
    let _feed = ringfs::api::spawn_events(srv.client(), Scope::Extension, cfg, tx);
    let mut c1 = srv.conn().await;
    c1.subscribe().await;
    assert_eq!(next(&mut rx).await, LiveNotice::Live { gap: true });
    // The server reads on (its WebSocket layer answers each ping with a pong) but never echoes
    // a JSON heartbeat: over six heartbeat periods the client keeps the connection.
    let mut heartbeats = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1200);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, c1.ws.next()).await {
        if let Message::Text(t) = m
            && t.as_str().contains("Heartbeat")
        {
            heartbeats += 1;
        }
    }
    assert!(heartbeats >= 3, "{heartbeats} heartbeats");
    assert!(rx.try_recv().is_err(), "no Down: the pongs showed it alive");
    assert_eq!(srv.wstokens(), 1, "one connection");
}

/// The next text frame the client sends is the subscription's `DELETE`, then the connection ends.
async fn deleted(c: &mut Conn, id: &str) {
    let bye = c.recv().await;
    assert_eq!(bye[0]["type"], "ClientRequest", "{bye}");
    assert_eq!(bye[0]["method"], "DELETE", "{bye}");
    assert_eq!(
        bye[0]["path"],
        format!("/restapi/v1.0/subscription/{id}"),
        "{bye}"
    );
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match c.ws.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        end.is_ok(),
        "the client closes the connection after its DELETE"
    );
}

#[tokio::test]
async fn a_consumer_that_goes_away_deletes_the_subscription() {
    let mut srv = Server::start().await;
    let (tx, mut rx) = mpsc::channel(16);
    let feed = ringfs::api::spawn_events(srv.client(), Scope::Extension, config(), tx);
    let mut c = srv.conn().await;
    c.subscribe().await;
    assert_eq!(next(&mut rx).await, LiveNotice::Live { gap: true });
    drop(rx);
    deleted(&mut c, "sub-1").await;
    ends(feed).await;
}

#[tokio::test]
async fn a_consumer_gone_before_the_subscription_is_answered_still_deletes_it() {
    let mut srv = Server::start().await;
    let (tx, rx) = mpsc::channel(16);
    let feed = ringfs::api::spawn_events(srv.client(), Scope::Extension, config(), tx);
    let mut c = srv.conn().await;
    c.details("wsc-0", None).await;
    let req = c.recv().await;
    assert_eq!(req[0]["method"], "POST", "{req}");
    // The consumer leaves while the request is out; the service creates the subscription
    // all the same and says so a moment later.
    drop(rx);
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send(
        json!([{"type": "ClientRequest", "messageId": req[0]["messageId"], "status": 200,
        "headers": {"RCRequestId": "r-1", "WSG-SubscriptionId": "sub-9"},
        "wsc": {"token": "wsc-after-sub", "sequence": 2}},
        {"id": "sub-9", "status": "Active", "eventFilters": ["x"],
            "deliveryMode": {"transportType": "WebSocket"}}]),
    )
    .await;
    deleted(&mut c, "sub-9").await;
    ends(feed).await;
}

#[tokio::test]
async fn a_consumer_gone_while_the_subscription_is_never_answered_stops_in_bounded_time() {
    let mut srv = Server::start().await;
    let (tx, rx) = mpsc::channel(16);
    let feed = ringfs::api::spawn_events(srv.client(), Scope::Extension, config(), tx);
    let mut c = srv.conn().await;
    c.details("wsc-0", None).await;
    c.recv().await;
    drop(rx);
    // No answer ever comes: the feed waits at most the handshake timeout (2 s here), sends
    // nothing it cannot name, and ends.
    let started = std::time::Instant::now();
    ends(feed).await;
    assert!(started.elapsed() < Duration::from_secs(4));
    let after = tokio::time::timeout(Duration::from_millis(300), c.ws.next()).await;
    if let Ok(Some(Ok(Message::Text(t)))) = after {
        panic!("nothing to delete without an id, got {t}");
    }
}
