//! The emulator's WebSocket notifications through a real WebSocket client (tokio-tungstenite),
//! written from the contract's "The WebSocket protocol": wstoken, ConnectionDetails,
//! subscriptions over the socket, telephony session events of calls started on demand,
//! heartbeats, timeouts, recovery. Every window is short, so the file runs in seconds.

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::StatusCode;
use ringfs::emulator::{Config, Emulator, NewCall, Notifications, RateLimits};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const EXT_FILTER: &str = "/restapi/v1.0/account/~/extension/~/telephony/sessions";
const ACCOUNT_FILTER: &str = "/restapi/v1.0/account/~/telephony/sessions";

/// Short event timings: a 1 s call is Setup, Proceeding at 0.1 s, Answered at 0.3 s,
/// Disconnected at 1 s.
fn fast() -> Notifications {
    Notifications::default().event_delays(Duration::from_millis(100), Duration::from_millis(300))
}

/// The record delay and the recording delay of [`config`].
const DELAY: Duration = Duration::from_millis(500);

/// No generated calls (only the example call, long over), so that the only events are those of
/// the calls a test starts; records and recordings follow a call by [`DELAY`] each.
fn config(n: Notifications) -> Config {
    Config {
        calls: 0,
        rate: RateLimits::unlimited(),
        record_delay: DELAY,
        recording_delay: DELAY,
        notifications: n,
        ..Config::default()
    }
}

/// A recorded inbound call of 1 s.
fn one_second() -> NewCall {
    NewCall {
        duration: Duration::from_secs(1),
        ..NewCall::default()
    }
}

async fn start(config: Config) -> Emulator {
    Emulator::start(config).await.expect("emulator starts")
}

fn http() -> reqwest::Client {
    ringfs::api::http_client_builder()
        .no_proxy()
        .build()
        .expect("client")
}

async fn login(emu: &Emulator) -> String {
    let c = Config::default();
    let r = http()
        .post(format!("{}/restapi/oauth/token", emu.api_url()))
        .basic_auth(&c.client_id, Some(&c.client_secret))
        .form(&[("grant_type", JWT_GRANT), ("assertion", &c.jwt)])
        .send()
        .await
        .expect("token request");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("token json");
    v["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

async fn wstoken_response(emu: &Emulator, token: &str) -> reqwest::Response {
    http()
        .post(format!("{}/restapi/oauth/wstoken", emu.api_url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("wstoken request")
}

/// `(uri, ws_access_token)`.
async fn wstoken(emu: &Emulator, token: &str) -> (String, String) {
    let r = wstoken_response(emu, token).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("wstoken json");
    (
        v["uri"].as_str().expect("uri").to_string(),
        v["ws_access_token"]
            .as_str()
            .expect("ws_access_token")
            .to_string(),
    )
}

async fn connect_with(uri: &str, ws_token: &str, wsc: Option<&str>) -> Ws {
    let mut url = format!("{uri}?access_token={ws_token}");
    if let Some(w) = wsc {
        url.push_str("&wsc=");
        url.push_str(&url::form_urlencoded::byte_serialize(w.as_bytes()).collect::<String>());
    }
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket handshake")
        .0
}

/// Logs in, gets a wstoken, connects; returns the socket and its ConnectionDetails message.
async fn connect(emu: &Emulator) -> (Ws, Value) {
    let token = login(emu).await;
    let (uri, ws_token) = wstoken(emu, &token).await;
    let mut ws = connect_with(&uri, &ws_token, None).await;
    let details = recv(&mut ws).await.expect("ConnectionDetails");
    (ws, details)
}

/// What the socket delivered next.
#[derive(Debug)]
enum Got {
    Json(Value),
    /// A close frame.
    Closed,
    /// The connection ended without a close frame.
    Dropped,
}

async fn next(ws: &mut Ws, within: Duration) -> Option<Got> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None) | Ok(Some(Err(_))) => return Some(Got::Dropped),
            Ok(Some(Ok(Message::Text(t)))) => {
                return Some(Got::Json(serde_json::from_str(t.as_str()).expect("json")));
            }
            Ok(Some(Ok(Message::Close(_)))) => return Some(Got::Closed),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

async fn recv(ws: &mut Ws) -> Option<Value> {
    match next(ws, Duration::from_secs(5)).await {
        Some(Got::Json(v)) => Some(v),
        _ => None,
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// Sends a ClientRequest and returns its answer (skipping events that arrive meanwhile).
async fn request(ws: &mut Ws, id: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let header = json!({"type": "ClientRequest", "messageId": id, "method": method, "path": path});
    send(
        ws,
        match body {
            Some(b) => json!([header, b]),
            None => json!([header]),
        },
    )
    .await;
    loop {
        let m = recv(ws).await.expect("an answer");
        if m[0]["type"] == "ClientRequest" {
            return m;
        }
    }
}

async fn subscribe(ws: &mut Ws, filters: &[&str]) -> Value {
    let m = request(
        ws,
        "sub-1",
        "POST",
        "/restapi/v1.0/subscription",
        Some(json!({"eventFilters": filters, "deliveryMode": {"transportType": "WebSocket"}})),
    )
    .await;
    assert_eq!(m[0]["status"], 200, "{m}");
    m
}

/// Events of one session until its final Disconnected (no reason), in arrival order, and any
/// of the session that come within 300 ms after it (out of order, the final Disconnected comes
/// before the event paired with it).
async fn events_until_end(ws: &mut Ws, session_id: &str) -> Vec<Value> {
    let mut got = Vec::new();
    let mut ended: Option<tokio::time::Instant> = None;
    loop {
        let m = match ended {
            None => recv(ws).await.expect("an event"),
            Some(at) => {
                let left = (at + Duration::from_millis(300))
                    .saturating_duration_since(tokio::time::Instant::now());
                match next(ws, left).await {
                    Some(Got::Json(m)) => m,
                    _ => return got,
                }
            }
        };
        if m[0]["type"] != "ServerNotification" || m[1]["body"]["sessionId"] != session_id {
            continue;
        }
        let s = &m[1]["body"]["parties"][0]["status"];
        if s["code"] == "Disconnected" && s.get("reason").is_none() {
            ended = Some(tokio::time::Instant::now());
        }
        got.push(m);
    }
}

/// Sleeps until the wall clock reads `t`.
async fn sleep_to(t: jiff::Timestamp) {
    let left = t.duration_since(jiff::Timestamp::now());
    if let Ok(d) = Duration::try_from(left) {
        tokio::time::sleep(d).await;
    }
}

fn codes(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|m| {
            let s = &m[1]["body"]["parties"][0]["status"];
            match s["reason"].as_str() {
                Some(r) => format!("{}/{r}", s["code"].as_str().unwrap_or("")),
                None => s["code"].as_str().unwrap_or("").to_string(),
            }
        })
        .collect()
}

fn sequences(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|m| m[1]["body"]["sequence"].as_u64().expect("body.sequence"))
        .collect()
}

fn wsc(m: &Value) -> (String, u64) {
    (
        m[0]["wsc"]["token"]
            .as_str()
            .expect("wsc.token")
            .to_string(),
        m[0]["wsc"]["sequence"].as_u64().expect("wsc.sequence"),
    )
}

#[tokio::test]
async fn wstoken_connect_and_connection_details() {
    let emu = start(config(Notifications::default())).await;
    let token = login(&emu).await;
    let r = wstoken_response(&emu, &token).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-rate-limit-group"], "auth");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["expires_in"], 30);
    let uri = v["uri"].as_str().unwrap();
    assert!(
        uri.starts_with("ws://127.0.0.1:") && uri.ends_with("/ws"),
        "{uri}"
    );
    let mut ws = connect_with(uri, v["ws_access_token"].as_str().unwrap(), None).await;
    let d = recv(&mut ws).await.unwrap();
    let (h, b) = (&d[0], &d[1]);
    assert_eq!(h["type"], "ConnectionDetails");
    assert_eq!(h["status"], 200);
    assert!(
        h["messageId"].is_string() && h["headers"].is_object(),
        "{d}"
    );
    assert!(!wsc(&d).0.is_empty());
    assert_eq!(b["recoveryBufferSize"], 100);
    assert_eq!(b["recoveryTimeout"], 180);
    assert_eq!(b["idleTimeout"], 1800);
    assert_eq!(b["absoluteTimeout"], 86400);
    assert_eq!(b["maxActiveRequests"], 10);
    assert!(b["creationTime"].is_string() && b["maxConnectionsPerSession"].is_u64());
    assert!(
        b.get("recoveryState").is_none(),
        "a fresh connection recovers nothing"
    );

    // Without a bearer token there is no wstoken.
    let r = http()
        .post(format!("{}/restapi/oauth/wstoken", emu.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let s = emu.stats();
    assert_eq!(s.ws_tokens, 2);
    assert_eq!(s.endpoint("wstoken"), 2);
    assert_eq!(s.ws_connections, 1);
    assert_eq!(emu.ws_open_connections(), 1);

    // The windows announced are the configured ones.
    emu.set_notifications(
        Notifications::default()
            .recovery_timeout(Duration::from_secs(7))
            .recovery_buffer_size(9)
            .idle_timeout(Duration::from_secs(11))
            .absolute_timeout(Duration::from_secs(13)),
    );
    let (_ws2, d) = connect(&emu).await;
    assert_eq!(
        (
            &d[1]["recoveryTimeout"],
            &d[1]["recoveryBufferSize"],
            &d[1]["idleTimeout"],
            &d[1]["absoluteTimeout"]
        ),
        (&json!(7), &json!(9), &json!(11), &json!(13))
    );
}

#[tokio::test]
async fn subscription_answers_echo_the_message_id_and_name_the_subscription() {
    let emu = start(config(fast())).await;
    let (mut ws, _) = connect(&emu).await;
    let m = subscribe(&mut ws, &[EXT_FILTER]).await;
    let (h, b) = (&m[0], &m[1]);
    assert_eq!(h["type"], "ClientRequest");
    assert_eq!(h["messageId"], "sub-1");
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(h["headers"]["WSG-SubscriptionId"], id.as_str());
    assert_eq!(h["headers"]["X-Rate-Limit-Group"], "medium");
    assert_eq!(b["status"], "Active");
    assert_eq!(b["eventFilters"], json!([EXT_FILTER]));
    assert_eq!(b["deliveryMode"]["transportType"], "WebSocket");
    assert!(
        b["creationTime"].is_string() && b["expiresIn"].is_u64(),
        "{m}"
    );

    // A second POST replaces the first: events name the new subscription.
    let m2 = subscribe(&mut ws, &[ACCOUNT_FILTER]).await;
    let id2 = m2[1]["id"].as_str().unwrap().to_string();
    assert_ne!(id, id2);
    let call = emu.start_call(one_second());
    let ev = recv(&mut ws).await.unwrap();
    assert_eq!(ev[0]["type"], "ServerNotification");
    assert_eq!(ev[1]["subscriptionId"], id2.as_str());
    assert_eq!(ev[1]["body"]["sessionId"], call.session_id.as_str());
    assert_eq!(
        ev[1]["event"],
        "/restapi/v1.0/account/11111111/telephony/sessions"
    );

    // The old one is gone; the new one renews and is removed.
    let path = |id: &str| format!("/restapi/v1.0/subscription/{id}");
    let r = request(&mut ws, "r1", "PUT", &path(&id), None).await;
    assert_eq!(r[0]["status"], 404, "{r}");
    let r = request(&mut ws, "r2", "PUT", &path(&id2), None).await;
    assert_eq!(
        (&r[0]["status"], &r[0]["messageId"]),
        (&json!(200), &json!("r2"))
    );
    assert_eq!(r[0]["headers"]["X-Rate-Limit-Group"], "light");
    assert_eq!(r[1]["id"], id2.as_str());
    let r = request(&mut ws, "r3", "DELETE", &path(&id2), None).await;
    assert_eq!(r[0]["status"], 204, "{r}");
    let r = request(&mut ws, "r4", "GET", &path(&id2), None).await;
    assert_eq!(r[0]["status"], 404, "{r}");

    // Filters other than the telephony sessions ones are refused.
    let r = request(
        &mut ws,
        "bad",
        "POST",
        "/restapi/v1.0/subscription",
        Some(
            json!({"eventFilters": ["/restapi/v1.0/account/~/extension/~/message-store"],
                    "deliveryMode": {"transportType": "WebSocket"}}),
        ),
    )
    .await;
    assert_eq!(r[0]["status"], 400);
    assert_eq!(r[1]["errors"][0]["errorCode"], "SUB-521");
    let s = emu.stats();
    assert_eq!(s.ws_subscriptions, 2);
    assert_eq!(s.by_group.get("Medium"), Some(&3));
    assert_eq!(s.by_group.get("Light"), Some(&4));
}

#[tokio::test]
async fn a_call_emits_four_statuses_then_reaches_the_call_log_and_the_media_host() {
    let emu = start(config(fast())).await;
    let token = login(&emu).await;
    let (mut ws, details) = connect(&emu).await;
    subscribe(&mut ws, &[EXT_FILTER]).await;
    let call = emu.start_call(one_second());
    let rec = call.recording_id.clone().expect("recorded");
    let events = events_until_end(&mut ws, &call.session_id).await;
    assert_eq!(
        codes(&events),
        ["Setup", "Proceeding", "Answered", "Disconnected"]
    );
    assert_eq!(sequences(&events), [1, 2, 3, 4]);
    let mut last = wsc(&details).1;
    for m in &events {
        let (tok, seq) = wsc(m);
        assert!(seq > last && !tok.is_empty(), "wsc.sequence increases");
        last = seq;
        let e = &m[1];
        assert_eq!(m[0]["status"], 200);
        assert!(e["uuid"].is_string() && e["timestamp"].is_string());
        assert_eq!(
            e["event"],
            "/restapi/v1.0/account/11111111/extension/22222222/telephony/sessions"
        );
        assert!(e["ownerId"].is_string() && e["subscriptionId"].is_string());
        let b = &e["body"];
        assert_eq!(b["telephonySessionId"], call.telephony_session_id.as_str());
        assert!(b["serverId"].is_string() && b["eventTime"].is_string());
        assert_eq!(b["origin"]["type"], "Call");
        let p = &b["parties"][0];
        assert_eq!(p["accountId"], "11111111");
        assert_eq!(p["extensionId"], "22222222");
        assert_eq!(p["direction"], "Inbound");
        assert_eq!(p["to"]["extensionId"], "22222222");
        assert!(p["id"].is_string() && p["from"].is_object());
        assert_eq!(p["status"]["rcc"], false);
        assert_eq!(
            (&p["missedCall"], &p["standAlone"], &p["muted"]),
            (&json!(false), &json!(false), &json!(false))
        );
    }
    let recs = |i: usize| events[i][1]["body"]["parties"][0]["recordings"].clone();
    assert_eq!(recs(0), Value::Null, "no recording before the answer");
    assert_eq!(recs(2), json!([{"id": rec, "active": true}]));
    assert_eq!(recs(3), json!([{"id": rec, "active": false}]));
    assert_eq!(
        events[3][1]["body"]["eventTime"],
        call.end.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        "Disconnected at the call's end"
    );

    // The call log has the record DELAY after the end, the media host the bytes DELAY later
    // (the emulator's own `visible_at` and `fetchable_at`).
    assert_eq!(call.visible_at, call.end + DELAY);
    assert_eq!(call.fetchable_at, call.visible_at + DELAY);
    let from = (call.start - jiff::SignedDuration::from_hours(1)).to_string();
    let url = format!(
        "{}/restapi/v1.0/account/~/extension/~/call-log?sessionId={}&dateFrom={from}",
        emu.api_url(),
        call.session_id
    );
    let records = |v: Value| v["records"].as_array().cloned().unwrap_or_default();
    let get = |url: String| {
        let token = token.clone();
        async move {
            http()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("request")
        }
    };
    let early = records(get(url.clone()).await.json().await.unwrap());
    assert!(
        jiff::Timestamp::now() < call.visible_at,
        "the test asked before the record was due"
    );
    assert!(early.is_empty(), "not in the call log yet: {early:?}");
    let content = format!(
        "{}/restapi/v1.0/account/~/recording/{rec}/content",
        emu.media_url()
    );
    sleep_to(call.visible_at + Duration::from_millis(100)).await;
    let listed = records(get(url).await.json().await.unwrap());
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["recording"]["id"], rec.as_str());
    let r = get(content.clone()).await;
    assert!(jiff::Timestamp::now() < call.fetchable_at);
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "not fetchable yet");
    sleep_to(call.fetchable_at + Duration::from_millis(100)).await;
    let r = get(content).await;
    assert_eq!(r.status(), StatusCode::OK);
    let bytes = r.bytes().await.unwrap();
    assert_eq!(Some(bytes.to_vec()), emu.recording_bytes(&rec));
    assert_eq!(emu.stats().ws_events_sent, 4);
}

#[tokio::test]
async fn filters_with_recordings_and_status_code_pass_only_their_events() {
    let emu = start(config(fast())).await;
    let (mut ws, _) = connect(&emu).await;
    subscribe(
        &mut ws,
        &["/restapi/v1.0/account/~/telephony/sessions?withRecordings=true&statusCode=Disconnected"],
    )
    .await;
    let silent = emu.start_call(NewCall {
        recorded: false,
        ..one_second()
    });
    let recorded = emu.start_call(one_second());
    let m = recv(&mut ws).await.unwrap();
    assert_eq!(m[1]["body"]["sessionId"], recorded.session_id.as_str());
    assert_eq!(codes(std::slice::from_ref(&m)), ["Disconnected"]);
    assert_eq!(m[1]["body"]["sequence"], 4);
    assert!(
        next(&mut ws, Duration::from_millis(400)).await.is_none(),
        "nothing of {} (no recording)",
        silent.session_id
    );
}

#[tokio::test]
async fn out_of_order_and_transfer_settings() {
    let emu = start(config(fast().out_of_order(true))).await;
    let (mut ws, _) = connect(&emu).await;
    subscribe(&mut ws, &[EXT_FILTER]).await;
    let call = emu.start_call(one_second());
    let events = events_until_end(&mut ws, &call.session_id).await;
    assert_eq!(sequences(&events), [2, 1, 4, 3]);
    assert_eq!(
        codes(&events),
        ["Proceeding", "Setup", "Disconnected", "Answered"]
    );

    emu.set_notifications(fast().transfer_reason(true));
    let call = emu.start_call(one_second());
    let events = events_until_end(&mut ws, &call.session_id).await;
    assert_eq!(
        codes(&events),
        [
            "Setup",
            "Proceeding",
            "Answered",
            "Disconnected/BlindTransfer",
            "Disconnected"
        ]
    );
    assert_eq!(sequences(&events), [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn refused_permissions_answer_403_cmn_401() {
    let emu = start(config(fast().refuse_subscription(Some("CallControl")))).await;
    let (mut ws, _) = connect(&emu).await;
    let r = request(
        &mut ws,
        "m1",
        "POST",
        "/restapi/v1.0/subscription",
        Some(json!({"eventFilters": [EXT_FILTER], "deliveryMode": {"transportType": "WebSocket"}})),
    )
    .await;
    assert_eq!(
        (&r[0]["status"], &r[0]["messageId"]),
        (&json!(403), &json!("m1"))
    );
    assert!(r[0]["headers"].get("WSG-SubscriptionId").is_none());
    let b = &r[1];
    assert_eq!(b["errors"][0]["errorCode"], "CMN-401");
    assert_eq!(b["errors"][0]["permissionName"], "CallControl");
    assert_eq!(
        b["message"],
        "In order to call this API endpoint, application needs to have [CallControl] permission"
    );
    assert_eq!(emu.stats().ws_subscriptions, 0);

    emu.set_notifications(fast().refuse_wstoken(Some("WebSocketsSubscription")));
    let token = login(&emu).await;
    let r = wstoken_response(&emu, &token).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["errors"][0]["errorCode"], "CMN-401");
    assert_eq!(b["errors"][0]["permissionName"], "WebSocketsSubscription");
}

#[tokio::test]
async fn heartbeats_are_answered_and_idle_connections_closed() {
    let idle = Duration::from_millis(800);
    let emu = start(config(fast().idle_timeout(idle))).await;
    let (mut ws, _) = connect(&emu).await;
    let opened = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(&mut ws, json!([{"type": "Heartbeat", "messageId": "hb-1"}])).await;
    let hb = recv(&mut ws).await.unwrap();
    assert_eq!(hb[0]["type"], "Heartbeat");
    assert_eq!(hb[0]["messageId"], "hb-1");
    // The heartbeat moved the idle deadline: the close comes `idle` after it, not after opening.
    let err = match next(&mut ws, Duration::from_secs(3)).await {
        Some(Got::Json(v)) => v,
        other => panic!("an Error message, got {other:?}"),
    };
    assert!(
        opened.elapsed() >= Duration::from_millis(1250),
        "{:?}",
        opened.elapsed()
    );
    assert_eq!(err[0]["type"], "Error");
    assert_eq!(err[1]["errorCode"], "WSG-902");
    assert!(matches!(
        next(&mut ws, Duration::from_secs(2)).await,
        Some(Got::Closed | Got::Dropped)
    ));

    emu.set_notifications(fast().absolute_timeout(Duration::from_millis(700)));
    let (mut ws, _) = connect(&emu).await;
    let err = loop {
        send(&mut ws, json!([{"type": "Heartbeat", "messageId": "hb"}])).await;
        let m = recv(&mut ws).await.expect("a message");
        if m[0]["type"] == "Error" {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    assert_eq!(err[1]["errorCode"], "WSG-903");
}

#[tokio::test]
async fn a_dropped_connection_recovers_and_gets_each_missed_event_once() {
    let emu = start(config(
        fast()
            .drop_after(Some(Duration::from_millis(700)))
            .event_delays(Duration::from_millis(150), Duration::from_millis(400)),
    ))
    .await;
    let token = login(&emu).await;
    let (uri, ws_token) = wstoken(&emu, &token).await;
    let mut ws = connect_with(&uri, &ws_token, None).await;
    let mut newest = wsc(&recv(&mut ws).await.unwrap());
    let sub = subscribe(&mut ws, &[EXT_FILTER]).await;
    let call = emu.start_call(NewCall {
        duration: Duration::from_secs(1),
        ..NewCall::default()
    });
    let mut seen = Vec::new();
    let got = loop {
        match next(&mut ws, Duration::from_secs(3)).await {
            Some(Got::Json(m)) => {
                if m[0]["type"] == "ServerNotification" {
                    newest = wsc(&m);
                    seen.push(m);
                }
            }
            other => break other,
        }
    };
    assert!(
        matches!(got, Some(Got::Dropped)),
        "dropped without a close frame: {got:?}"
    );
    assert_eq!(codes(&seen), ["Setup", "Proceeding", "Answered"]);

    // The call ends while no connection is open; recover within the window.
    emu.set_notifications(fast());
    assert!(jiff::Timestamp::now() < call.end, "dropped before the end");
    sleep_to(call.end + Duration::from_millis(200)).await;
    let (uri, ws_token) = wstoken(&emu, &token).await;
    let mut ws = connect_with(&uri, &ws_token, Some(&newest.0)).await;
    let d = recv(&mut ws).await.unwrap();
    assert_eq!(d[0]["type"], "ConnectionDetails");
    assert_eq!(d[1]["recoveryState"], "Successful", "{d}");
    let mut replayed = Vec::new();
    while let Some(Got::Json(m)) = next(&mut ws, Duration::from_millis(500)).await {
        replayed.push(m);
    }
    assert_eq!(
        codes(&replayed),
        ["Disconnected"],
        "exactly the missed event"
    );
    assert_eq!(replayed[0][1]["subscriptionId"], sub[1]["id"]);
    assert!(wsc(&replayed[0]).1 > newest.1);
    assert_eq!(emu.stats().ws_recoveries, 1);

    // The subscription lives on in the recovered session.
    let call2 = emu.start_call(one_second());
    assert_ne!(call.session_id, call2.session_id);
    let events = events_until_end(&mut ws, &call2.session_id).await;
    assert_eq!(codes(&events).len(), 4);
}

#[tokio::test]
async fn recovery_after_the_window_or_with_an_unknown_token_fails() {
    let emu = start(config(fast().recovery_timeout(Duration::from_millis(500)))).await;
    let token = login(&emu).await;
    let (uri, ws_token) = wstoken(&emu, &token).await;
    let mut ws = connect_with(&uri, &ws_token, None).await;
    let d = recv(&mut ws).await.unwrap();
    subscribe(&mut ws, &[EXT_FILTER]).await;
    emu.drop_ws_connections();
    assert!(matches!(
        next(&mut ws, Duration::from_secs(2)).await,
        Some(Got::Dropped)
    ));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, ws_token) = wstoken(&emu, &token).await;
    let mut ws = connect_with(&uri, &ws_token, Some(&wsc(&d).0)).await;
    let d2 = recv(&mut ws).await.unwrap();
    assert_eq!(d2[1]["recoveryState"], "Failed", "{d2}");
    assert!(d2[1]["recoveryErrorCode"].is_string());
    // No subscription: a call brings nothing until the client subscribes again.
    let call = emu.start_call(one_second());
    assert!(next(&mut ws, Duration::from_millis(500)).await.is_none());
    subscribe(&mut ws, &[EXT_FILTER]).await;
    let m = recv(&mut ws).await.unwrap();
    assert_eq!(m[1]["body"]["sessionId"], call.session_id.as_str());

    let (_, ws_token) = wstoken(&emu, &token).await;
    let mut ws = connect_with(&uri, &ws_token, Some("bm90IGEgdG9rZW4=")).await;
    let d3 = recv(&mut ws).await.unwrap();
    assert_eq!(d3[1]["recoveryState"], "Failed");
    assert_eq!(emu.stats().ws_recoveries, 0);
}

#[tokio::test]
async fn ws_tokens_are_single_use_and_expire() {
    let emu = start(config(fast().wstoken_ttl(Duration::from_millis(300)))).await;
    let token = login(&emu).await;
    let (uri, ws_token) = wstoken(&emu, &token).await;
    let mut first = connect_with(&uri, &ws_token, None).await;
    assert_eq!(
        recv(&mut first).await.unwrap()[0]["type"],
        "ConnectionDetails"
    );
    let mut again = connect_with(&uri, &ws_token, None).await;
    let e = recv(&mut again).await.unwrap();
    assert_eq!(e[0]["type"], "Error");
    assert_eq!(e[0]["status"], 401);
    assert_eq!(e[1]["errorCode"], "WSG-901");
    assert!(matches!(
        next(&mut again, Duration::from_secs(2)).await,
        Some(Got::Closed | Got::Dropped)
    ));

    let (_, late) = wstoken(&emu, &token).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ws = connect_with(&uri, &late, None).await;
    let e = recv(&mut ws).await.unwrap();
    assert_eq!(
        (&e[0]["type"], &e[1]["errorCode"]),
        (&json!("Error"), &json!("WSG-904"))
    );

    let mut none = connect_with(&uri, "", None).await;
    assert_eq!(recv(&mut none).await.unwrap()[1]["errorCode"], "WSG-901");
    assert_eq!(emu.stats().ws_connections, 4);
}

#[tokio::test]
async fn wstoken_counts_in_the_auth_group() {
    let emu = start(Config {
        rate: RateLimits {
            auth: 3,
            ..RateLimits::unlimited()
        },
        ..config(fast())
    })
    .await;
    let token = login(&emu).await;
    wstoken(&emu, &token).await;
    wstoken(&emu, &token).await;
    let r = wstoken_response(&emu, &token).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["x-rate-limit-group"], "auth");
    assert!(r.headers().contains_key("retry-after"));
    let s = emu.stats();
    assert_eq!(s.by_group.get("Auth"), Some(&4));
    assert_eq!(s.endpoint("wstoken"), 3);
    assert_eq!(s.ws_tokens, 3);
    assert_eq!(s.throttled, 1);
}

/// The official RingCentral Python SDK's WebSocket client (PyPI `ringcentral`, unchanged):
/// gets a wstoken, connects, subscribes (it recognises the answer by `WSG-SubscriptionId`) and
/// receives the events of a call.
const SDK_SCRIPT: &str = r#"
import asyncio, json, os
from ringcentral import SDK
from ringcentral.websocket.web_socket_client import WebSocketClient
from ringcentral.websocket.events import WebSocketEvents

platform = SDK(os.environ["RC_CLIENT_ID"], os.environ["RC_CLIENT_SECRET"], os.environ["RC_SERVER_URL"]).platform()
platform.login(jwt=os.environ["RC_JWT"])

async def main():
    client = WebSocketClient(platform)
    done = asyncio.Event()
    got = []
    def created(c):
        asyncio.get_running_loop().create_task(c.create_subscription([os.environ["FILTER"]]))
    def subscribed(sub):
        print(json.dumps({"subscribed": sub.get_subscription_info()[1]["id"]}), flush=True)
    def notified(message):
        got.append(message)
        status = message[1]["body"]["parties"][0]["status"]
        if status["code"] == "Disconnected" and "reason" not in status:
            done.set()
    client.on(WebSocketEvents.connectionCreated, created)
    client.on(WebSocketEvents.subscriptionCreated, subscribed)
    client.on(WebSocketEvents.receiveSubscriptionNotification, notified)
    task = asyncio.get_running_loop().create_task(client.create_new_connection())
    await asyncio.wait_for(done.wait(), 20)
    print(json.dumps({"events": got}), flush=True)
    task.cancel()

asyncio.run(main())
"#;

#[tokio::test]
async fn the_official_python_sdk_subscribes_and_receives_a_calls_events() {
    use tokio::io::AsyncBufReadExt as _;
    let probe = std::process::Command::new("python3")
        .args(["-c", "import ringcentral.websocket.web_socket_client"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        panic!("the official RingCentral Python SDK is missing: run `pip install ringcentral`");
    }
    let emu = start(config(fast())).await;
    let c = Config::default();
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", SDK_SCRIPT])
        .env("RC_SERVER_URL", emu.api_url())
        .env("RC_CLIENT_ID", &c.client_id)
        .env("RC_CLIENT_SECRET", &c.client_secret)
        .env("RC_JWT", &c.jwt)
        .env("FILTER", EXT_FILTER)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = |l: Option<String>| -> Value {
        serde_json::from_str(&l.expect("a line from the SDK script")).expect("json")
    };
    let within = Duration::from_secs(20);
    let first = tokio::time::timeout(within, lines.next_line()).await;
    let subscribed = line(first.expect("the SDK subscribes").unwrap());
    assert!(subscribed["subscribed"].is_string(), "{subscribed}");
    let call = emu.start_call(one_second());
    let last = tokio::time::timeout(within, lines.next_line()).await;
    let events = line(last.expect("the SDK gets the events").unwrap())["events"]
        .as_array()
        .cloned()
        .unwrap();
    assert_eq!(
        codes(&events),
        ["Setup", "Proceeding", "Answered", "Disconnected"]
    );
    assert!(
        events
            .iter()
            .all(|m| m[1]["body"]["sessionId"] == call.session_id.as_str()
                && m[1]["subscriptionId"] == subscribed["subscribed"])
    );
    assert!(child.wait().await.unwrap().success());
    assert_eq!(emu.stats().ws_subscriptions, 1);
}
