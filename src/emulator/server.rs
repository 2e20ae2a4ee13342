//! The HTTP side of the emulator: the API host and the media host.
//!
//! Every RingCentral request goes through the same gate, in this order:
//! 1. accounting (`by_endpoint`; `media_by_recording` for recording content),
//! 2. the rate limiter of the endpoint's group (`by_group`; 429 `CMN-301`, penalty restarts),
//!    including forced 429s from [`Faults`],
//! 3. injected 5xx answers,
//! 4. authentication (Basic client credentials for OAuth, Bearer or `access_token` otherwise),
//! 5. the endpoint itself.
//!
//! Rate limiting comes before authentication on purpose: counting failed requests too is the
//! stricter choice, and an emulator must not be kinder than the real service. Every answer of a
//! RingCentral endpoint carries the `X-Rate-Limit-*` headers of its group.
//!
//! Connections are served by hyper directly (not `axum::serve`) so that the `unreachable` fault
//! can close a kept-alive connection without answering: the service returns an error and hyper
//! drops the connection. A media body stream that yields an error likewise cuts the connection
//! mid-body, which is how `drop_after_bytes` works.
//!
//! Recording content then goes through the recording's [`MediaQuirks`] (see `quirks`): 404s and
//! 5xx it is refused with first, its Range handling, its speed cap and drop offsets; the
//! account-wide [`Faults`] apply on top.
//!
//! Besides the RingCentral paths, the media host serves `/__emulator/files/`: a plain HTTP
//! directory of the recordings (an HTML index, then each file with `Content-Length` and `Range`),
//! without auth, rate limits or faults, for programs that only speak plain HTTP (the benchmark's
//! rclone and httpdirfs mounts). Its requests are counted in [`Stats`] like the others.
//!
//! Lock order: `data` before `stats` and before the locks of `quirks`; `tokens`, `rate`,
//! `advertised`, `faults` are never held together with another lock.

// Handlers answer `Result<_, Response>`: the error *is* the HTTP answer (a RingCentral error body),
// and the emulator is not a hot path where the size of `Err` matters.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower_service::Service as _;

use super::audio::{AudioSpec, Codec, mix64};
use super::data::{ACCOUNT_ID, Call, EXTENSIONS, Generator, OWNER_EXTENSION_ID, Party, RecordingKind};
use super::quirks::{Answer, Cut, Gate, PerRecording, RangeReq, parse_range};
use super::{CallInfo, Config, Faults, MediaQuirks, RangeMode, Stats};

type Shared = std::sync::Arc<State>;

/// Rate-limit groups of the contract. Light and Medium (subscriptions) have no endpoint here
/// yet; they stay so the limits and headers of every group are in one place.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Group {
    Light,
    Medium,
    Heavy,
    Auth,
}

impl Group {
    fn index(self) -> usize {
        self as usize
    }
    fn name(self) -> &'static str {
        match self {
            Group::Light => "Light",
            Group::Medium => "Medium",
            Group::Heavy => "Heavy",
            Group::Auth => "Auth",
        }
    }
    /// The value of `X-Rate-Limit-Group`.
    fn header(self) -> &'static str {
        match self {
            Group::Light => "light",
            Group::Medium => "medium",
            Group::Heavy => "heavy",
            Group::Auth => "auth",
        }
    }
}

/// One group's fixed window and penalty.
#[derive(Debug, Default)]
struct Bucket {
    window_start: Option<Instant>,
    count: u32,
    penalty_until: Option<Instant>,
}

/// What the limiter decided about one request.
enum Admission {
    Allowed { remaining: u32 },
    Throttled { retry_after: Duration },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenKind {
    Access,
    Refresh,
}

#[derive(Debug)]
struct Token {
    kind: TokenKind,
    session: u64,
    /// Tokens of older generations of their session were replaced by a refresh.
    generation: u32,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Session {
    generation: u32,
    revoked: bool,
}

#[derive(Debug, Default)]
struct Tokens {
    tokens: HashMap<String, Token>,
    sessions: HashMap<u64, Session>,
    next_session: u64,
}

/// The account's calls: the initial data set plus live calls started so far.
struct Data {
    calls: Vec<Call>,
    by_recording: HashMap<String, usize>,
    /// The next live call (not started yet) and its live index.
    pending_live: Option<(u64, Call)>,
}

/// Shared state of both hosts.
pub(crate) struct State {
    pub api_addr: SocketAddr,
    pub media_addr: SocketAddr,
    cfg: Config,
    generator: Generator,
    /// Emulator start, Unix ms (live calls are timed from it).
    t0_ms: i64,
    /// Distinguishes this run's tokens from any earlier run's.
    nonce: u64,
    faults: RwLock<Faults>,
    data: RwLock<Data>,
    tokens: Mutex<Tokens>,
    rate: Mutex<[Bucket; 4]>,
    /// Per group: when the last 429 was answered and until when its `Retry-After` told the
    /// client to wait (for `Stats::retry_after_violations`).
    advertised: Mutex<[Option<(Instant, Instant)>; 4]>,
    stats: Mutex<Stats>,
    bytes_served: AtomicU64,
    counter: AtomicU64,
    /// Media quirks set at runtime and what each recording has seen.
    quirks: PerRecording,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn ts(ms: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// `2019-03-08T22:30:29.505Z`, the call log's format.
fn fmt_ms(ms: i64) -> String {
    ts(ms).strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    pub fn new(cfg: Config, api_addr: SocketAddr, media_addr: SocketAddr) -> State {
        let t0_ms = now_ms();
        let generator = Generator {
            seed: cfg.seed,
            format: cfg.format,
            now_ms: t0_ms,
            days: cfg.days,
            record_delay_ms: cfg.record_delay.as_millis() as i64,
        };
        let calls = generator.initial(cfg.calls, &cfg.extra_calls);
        let by_recording = calls
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.recording.as_ref().map(|r| (r.id.clone(), i)))
            .collect();
        let mut data = Data { calls, by_recording, pending_live: None };
        if cfg.live.is_some() {
            data.pending_live = Some((1, Self::live_call(&generator, &cfg, t0_ms, 1)));
        }
        tracing::info!(calls = data.calls.len(), seed = cfg.seed, "emulated account ready");
        State {
            api_addr,
            media_addr,
            faults: RwLock::new(cfg.faults.clone()),
            nonce: mix64((t0_ms as u64) ^ (u64::from(std::process::id()) << 32) ^ u64::from(api_addr.port())),
            cfg,
            generator,
            t0_ms,
            data: RwLock::new(data),
            tokens: Mutex::new(Tokens::default()),
            rate: Mutex::new(Default::default()),
            advertised: Mutex::new(Default::default()),
            stats: Mutex::new(Stats::default()),
            bytes_served: AtomicU64::new(0),
            counter: AtomicU64::new(0),
            quirks: PerRecording::default(),
        }
    }

    /// Live call `k` (1-based) ends `k * interval` after start.
    fn live_call(generator: &Generator, cfg: &Config, t0_ms: i64, k: u64) -> Call {
        let interval = cfg.live.unwrap_or_default().as_millis() as i64;
        let end = t0_ms + k as i64 * interval.max(1);
        let mut call = generator.call(cfg.calls as u64 + 1000 + k, Some(0), true);
        call.start_ms = end - i64::from(call.duration_s) * 1000;
        call
    }

    /// Adds the live calls that have started by now.
    fn advance_live(&self, now: i64) {
        if self.cfg.live.is_none() {
            return;
        }
        let due = |d: &Data| d.pending_live.as_ref().is_some_and(|(_, c)| c.start_ms <= now);
        if !due(&self.data.read().unwrap_or_else(|e| e.into_inner())) {
            return;
        }
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        while due(&data) {
            let (k, call) = data.pending_live.take().expect("due implies pending");
            if let Some(r) = &call.recording {
                let index = data.calls.len();
                data.by_recording.insert(r.id.clone(), index);
            }
            data.calls.push(call);
            data.pending_live = Some((k + 1, Self::live_call(&self.generator, &self.cfg, self.t0_ms, k + 1)));
        }
    }

    fn visible_ms(&self, c: &Call) -> i64 {
        c.end_ms() + self.cfg.record_delay.as_millis() as i64
    }

    fn fetchable_ms(&self, c: &Call) -> i64 {
        self.visible_ms(c) + self.cfg.recording_delay.as_millis() as i64
    }

    /// The content type of a recording (metadata and content say the same).
    fn content_type(&self, recording_id: &str, audio: AudioSpec) -> &'static str {
        content_type(audio.codec, &self.quirks_of(recording_id, audio.len()))
    }

    /// The media quirks of a recording of `len` bytes.
    fn quirks_of(&self, recording_id: &str, len: u64) -> MediaQuirks {
        self.quirks.resolve(&self.cfg.media, recording_id, len)
    }

    pub fn media_quirks(&self, recording_id: &str) -> MediaQuirks {
        self.advance_live(now_ms());
        let len = self.recording(recording_id).map_or(0, |(audio, ..)| audio.len());
        self.quirks_of(recording_id, len)
    }

    pub fn set_media_quirks(&self, recording_id: &str, q: MediaQuirks) {
        self.quirks.set(recording_id, q);
    }

    pub fn stats(&self) -> Stats {
        let mut s = lock(&self.stats).clone();
        s.bytes_served = self.bytes_served.load(Ordering::Relaxed);
        s
    }

    pub fn reset_stats(&self) {
        *lock(&self.stats) = Stats::default();
        self.bytes_served.store(0, Ordering::Relaxed);
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.faults.write().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    fn faults(&self) -> Faults {
        self.faults.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn unreachable(&self) -> bool {
        self.faults.read().unwrap_or_else(|e| e.into_inner()).unreachable
    }

    fn hanging(&self) -> bool {
        self.faults.read().unwrap_or_else(|e| e.into_inner()).hang
    }

    fn fault_injected(&self) {
        lock(&self.stats).faults_injected += 1;
    }

    /// A seeded draw: true with probability `p`.
    fn roll(&self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let x = mix64(self.cfg.seed ^ mix64(n ^ 0xFA17));
        ((x >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn call_infos(&self) -> Vec<CallInfo> {
        self.advance_live(now_ms());
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        data.calls
            .iter()
            .map(|c| CallInfo {
                call_log_id: c.call_log_id.clone(),
                session_id: c.session_id.clone(),
                telephony_session_id: c.telephony_session_id.clone(),
                start: ts(c.start_ms),
                duration_s: u64::from(c.duration_s),
                end: ts(c.end_ms()),
                inbound: c.inbound,
                from_number: c.from.phone_number.clone(),
                from_name: c.from.name.clone(),
                to_number: c.to.phone_number.clone(),
                to_name: c.to.name.clone(),
                extension_id: c.extension().id.to_string(),
                recording_id: c.recording.as_ref().map(|r| r.id.clone()),
                content_type: c.recording.as_ref().map(|r| self.content_type(&r.id, r.audio)),
                recording_len: c.recording.as_ref().map(|r| r.audio.len()),
                visible_at: ts(self.visible_ms(c)),
                fetchable_at: ts(self.fetchable_ms(c)),
            })
            .collect()
    }

    fn recording(&self, id: &str) -> Option<(AudioSpec, i64, i64, u32)> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let call = &data.calls[*data.by_recording.get(id)?];
        let rec = call.recording.as_ref()?;
        Some((rec.audio, self.visible_ms(call), self.fetchable_ms(call), call.duration_s))
    }

    pub fn recording_bytes(&self, id: &str) -> Option<Vec<u8>> {
        self.advance_live(now_ms());
        self.recording(id).map(|(audio, ..)| audio.to_vec())
    }

    pub fn recording_range(&self, id: &str, offset: u64, len: u64) -> Option<Vec<u8>> {
        self.advance_live(now_ms());
        let (audio, ..) = self.recording(id)?;
        let end = offset.saturating_add(len).min(audio.len());
        let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
        audio.fill(offset.min(end), &mut buf);
        Some(buf)
    }

    // ----- rate limiting -----

    fn limit(&self, g: Group) -> u32 {
        let r = &self.cfg.rate;
        match g {
            Group::Light => r.light,
            Group::Medium => r.medium,
            Group::Heavy => r.heavy,
            Group::Auth => r.auth,
        }
    }

    fn admit(&self, g: Group) -> Admission {
        let now = Instant::now();
        let limit = self.limit(g);
        let penalty = self.cfg.rate.penalty;
        let (admission, violation) = {
            let mut buckets = lock(&self.rate);
            let b = &mut buckets[g.index()];
            if b.penalty_until.is_some_and(|until| now < until) {
                // The real penalty: a request during it restarts it.
                b.penalty_until = Some(now + penalty);
                (Admission::Throttled { retry_after: penalty }, true)
            } else {
                // A penalty that ran out leaves a fresh window behind.
                if b.penalty_until.take().is_some() {
                    b.window_start = None;
                }
                if b.window_start.is_none_or(|start| now >= start + self.cfg.rate.window) {
                    b.window_start = Some(now);
                    b.count = 0;
                }
                if b.count >= limit {
                    b.penalty_until = Some(now + penalty);
                    (Admission::Throttled { retry_after: penalty }, false)
                } else {
                    b.count += 1;
                    (Admission::Allowed { remaining: limit - b.count }, false)
                }
            }
        };
        let mut stats = lock(&self.stats);
        *stats.by_group.entry(g.name().to_string()).or_default() += 1;
        if let Admission::Throttled { .. } = admission {
            stats.throttled += 1;
            if violation {
                stats.penalty_violations += 1;
            }
        }
        admission
    }

    fn rate_headers(&self, g: Group, remaining: u32, resp: &mut Response) {
        let h = resp.headers_mut();
        // The header is whole seconds, as on the real service. Round a fractional window *up*:
        // advertising 2 for a 2.5 s window would make a client that trusts the header pace too
        // fast and meet 429s the real service would never send it.
        let window = self.cfg.rate.window.as_millis().div_ceil(1000).max(1) as u64;
        h.insert(HeaderName::from_static("x-rate-limit-group"), HeaderValue::from_static(g.header()));
        h.insert(HeaderName::from_static("x-rate-limit-limit"), HeaderValue::from(self.limit(g)));
        h.insert(HeaderName::from_static("x-rate-limit-remaining"), HeaderValue::from(remaining));
        h.insert(HeaderName::from_static("x-rate-limit-window"), HeaderValue::from(window));
    }

    /// Steps 1-3 of the gate, then `handler`; adds the rate headers to whatever is answered.
    fn gated(&self, endpoint: &str, g: Group, handler: impl FnOnce() -> Response) -> Response {
        *lock(&self.stats).by_endpoint.entry(endpoint.to_string()).or_default() += 1;
        self.advance_live(now_ms());
        self.check_retry_after(g);
        let faults = self.faults();
        let (mut resp, remaining) = if self.roll(faults.force_429_fraction) {
            self.fault_injected();
            let mut stats = lock(&self.stats);
            *stats.by_group.entry(g.name().to_string()).or_default() += 1;
            stats.throttled += 1;
            drop(stats);
            (too_many_requests(faults.force_429_retry_after.map(Duration::from_secs)), 0)
        } else {
            match self.admit(g) {
                Admission::Throttled { retry_after } => {
                    tracing::debug!(endpoint, group = g.name(), "429: rate limit");
                    (too_many_requests(Some(retry_after)), 0)
                }
                Admission::Allowed { remaining } => {
                    if self.roll(faults.error_5xx_fraction) {
                        self.fault_injected();
                        (self.server_error(), remaining)
                    } else {
                        (handler(), remaining)
                    }
                }
            }
        };
        self.rate_headers(g, remaining, &mut resp);
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            self.advertise_retry_after(g, &resp);
        }
        resp
    }

    /// Counts a request that arrived while the client was told to wait (see
    /// `Stats::retry_after_violations`).
    fn check_retry_after(&self, g: Group) {
        let now = Instant::now();
        let violation = lock(&self.advertised)[g.index()]
            .is_some_and(|(sent, until)| now >= sent + super::IN_FLIGHT_GRACE && now < until);
        if violation {
            tracing::debug!(group = g.name(), "request before the Retry-After of a 429 passed");
            lock(&self.stats).retry_after_violations += 1;
        }
    }

    /// Remembers how long a 429 told the client to wait (30 s without `Retry-After`).
    fn advertise_retry_after(&self, g: Group, resp: &Response) {
        let secs = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(30);
        let now = Instant::now();
        let until = now + Duration::from_secs(secs);
        let mut adv = lock(&self.advertised);
        let slot = &mut adv[g.index()];
        // A later 429 with an earlier end does not shorten the wait already asked for.
        *slot = Some((now, slot.map_or(until, |(_, u)| u.max(until))));
    }

    fn server_error(&self) -> Response {
        server_error(self.counter.fetch_add(1, Ordering::Relaxed))
    }

    // ----- tokens -----

    fn new_token(&self, kind: TokenKind) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let a = mix64(self.nonce ^ n);
        let b = mix64(a ^ self.nonce.rotate_left(17));
        let prefix = match kind {
            TokenKind::Access => "U0pDMDFQMDFBQ0Mw",
            TokenKind::Refresh => "U0pDMDFQMDFSRUYw",
        };
        format!("{prefix}{a:016x}{b:016x}")
    }

    /// Issues a new token pair for `session` (the session's current generation).
    fn issue(&self, tokens: &mut Tokens, session: u64, access_ttl: Duration, refresh_ttl: Duration) -> serde_json::Value {
        let generation = tokens.sessions.entry(session).or_default().generation;
        let now = Instant::now();
        let access = self.new_token(TokenKind::Access);
        tokens.tokens.insert(
            access.clone(),
            Token { kind: TokenKind::Access, session, generation, expires: now + access_ttl },
        );
        let mut body = json!({
            "access_token": access,
            "token_type": "bearer",
            "expires_in": access_ttl.as_secs(),
            "scope": "ReadAccounts ReadCallLog ReadCallRecording",
            "owner_id": OWNER_EXTENSION_ID,
            "endpoint_id": format!("emu{session}"),
            "session_id": format!("{}", 9_000_000 + session),
            "session_expires_in": refresh_ttl.as_secs().max(access_ttl.as_secs()),
            "session_idle_timeout": 3600,
        });
        if self.cfg.issue_refresh_tokens {
            let refresh = self.new_token(TokenKind::Refresh);
            tokens.tokens.insert(
                refresh.clone(),
                Token { kind: TokenKind::Refresh, session, generation, expires: now + refresh_ttl },
            );
            body["refresh_token"] = json!(refresh);
            body["refresh_token_expires_in"] = json!(refresh_ttl.as_secs());
        }
        body
    }

    /// Checks a Bearer token (or the media host's `access_token` query parameter).
    fn authorize(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<(), Response> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let Some(token) = bearer.or(query_token) else {
            return Err(rc_error(StatusCode::UNAUTHORIZED, "OAU-123", "Authorization header is not specified"));
        };
        let tokens = lock(&self.tokens);
        let invalid = || rc_error(StatusCode::UNAUTHORIZED, "OAU-149", "Invalid token");
        let Some(t) = tokens.tokens.get(token) else { return Err(invalid()) };
        if t.kind != TokenKind::Access {
            return Err(invalid());
        }
        let session = tokens.sessions.get(&t.session);
        if session.is_none_or(|s| s.revoked) {
            return Err(rc_error(StatusCode::UNAUTHORIZED, "OAU-213", "Token is revoked"));
        }
        if session.is_some_and(|s| s.generation != t.generation) {
            return Err(rc_error(StatusCode::UNAUTHORIZED, "OAU-213", "Token not found"));
        }
        if Instant::now() >= t.expires {
            return Err(rc_error(StatusCode::UNAUTHORIZED, "OAU-213", "Token expired"));
        }
        Ok(())
    }

    /// Basic client credentials of the OAuth endpoints.
    fn client_ok(&self, headers: &HeaderMap) -> Result<(), Response> {
        let creds = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let Some(creds) = creds else {
            return Err(oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "OAU-123",
                "Client authentication is required",
            ));
        };
        let (id, secret) = creds.split_once(':').unwrap_or((&creds, ""));
        if id != self.cfg.client_id || secret != self.cfg.client_secret {
            return Err(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "OAU-153", "Invalid client"));
        }
        Ok(())
    }
}

// ----- error bodies -----

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json;charset=UTF-8")], bytes).into_response()
}

/// `{"errorCode","message","errors":[{"errorCode","message"}]}`.
fn rc_error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({"errorCode": code, "message": message, "errors": [{"errorCode": code, "message": message}]}),
    )
}

/// 400 `CMN-101` for one query parameter.
fn param_error(name: &str, value: &str) -> Response {
    let message = format!("Parameter [{name}] value is invalid");
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"errorCode": "CMN-101", "message": message, "parameterName": name, "parameterValue": value,
                "errors": [{"errorCode": "CMN-101", "message": message, "parameterName": name, "parameterValue": value}]}),
    )
}

fn not_found(name: &str, value: &str) -> Response {
    let message = format!("Resource for parameter [{name}] is not found");
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"errorCode": "CMN-102", "message": message,
                "errors": [{"errorCode": "CMN-102", "message": message, "parameterName": name, "parameterValue": value}]}),
    )
}

fn oauth_error(status: StatusCode, error: &str, code: &str, description: &str) -> Response {
    json_response(
        status,
        &json!({"error": error, "error_description": description,
                "errors": [{"errorCode": code, "message": description}]}),
    )
}

/// The `n`-th of a run of 5xx answers: 503 `CMN-201` with `Retry-After: 1`, 500, 502 in turn.
fn server_error(n: u64) -> Response {
    match n % 3 {
        0 => {
            let mut r = rc_error(StatusCode::SERVICE_UNAVAILABLE, "CMN-201", "Service Temporary Unavailable");
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1u32));
            r
        }
        1 => (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response(),
        _ => (
            StatusCode::BAD_GATEWAY,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
        )
            .into_response(),
    }
}

fn too_many_requests(retry_after: Option<Duration>) -> Response {
    let mut r = rc_error(StatusCode::TOO_MANY_REQUESTS, "CMN-301", "Request rate exceeded");
    if let Some(d) = retry_after {
        let secs = d.as_millis().div_ceil(1000).max(1) as u64;
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

// ----- base URLs -----

/// `http://host:port` of the API as the client addressed it, and the media host beside it.
fn bases(state: &State, headers: &HeaderMap) -> (String, String) {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match host {
        Some(host) if !host.is_empty() => {
            let name = if host.starts_with('[') {
                host.split_inclusive(']').next().unwrap_or(host)
            } else {
                host.rsplit_once(':').map_or(host, |(n, _)| n)
            };
            (format!("http://{host}"), format!("http://{name}:{}", state.media_addr.port()))
        }
        _ => (format!("http://{}", state.api_addr), format!("http://{}", state.media_addr)),
    }
}

fn account_ok(account: &str) -> bool {
    account == "~" || account == ACCOUNT_ID
}

// ----- OAuth -----

fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

async fn token(AxState(st): AxState<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    st.gated("token", Group::Auth, || {
        if let Err(r) = st.client_ok(&headers) {
            return r;
        }
        let form = form(&body);
        let ttl = |key: &str, default: Duration, lo: u64, hi: u64| -> Duration {
            form.get(key)
                .and_then(|v| v.parse::<u64>().ok())
                .map(|v| Duration::from_secs(v.clamp(lo, hi)).min(default))
                .unwrap_or(default)
        };
        let access_ttl = ttl("access_token_ttl", st.cfg.access_ttl, 600, 3600);
        let refresh_ttl = ttl("refresh_token_ttl", st.cfg.refresh_ttl, 3600, 2_592_000);
        let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
        match grant {
            "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
                if form.get("assertion").map(String::as_str) != Some(st.cfg.jwt.as_str()) {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "OAU-140", "Invalid JWT token");
                }
                let mut tokens = lock(&st.tokens);
                let session = tokens.next_session;
                tokens.next_session += 1;
                tracing::debug!(session, "jwt login");
                json_response(StatusCode::OK, &st.issue(&mut tokens, session, access_ttl, refresh_ttl))
            }
            "refresh_token" => {
                let presented = form.get("refresh_token").map(String::as_str).unwrap_or("");
                let mut tokens = lock(&st.tokens);
                let invalid = |d| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "OAU-211", d);
                let Some(t) = tokens.tokens.get(presented).filter(|t| t.kind == TokenKind::Refresh) else {
                    return invalid("Invalid token");
                };
                let (session, generation, expires) = (t.session, t.generation, t.expires);
                let s = tokens.sessions.entry(session).or_default();
                if s.revoked || s.generation != generation {
                    return invalid("Token is revoked");
                }
                if Instant::now() >= expires {
                    return invalid("Token is expired");
                }
                // Single use: the new generation kills this refresh token and its access token.
                s.generation += 1;
                tracing::debug!(session, "refresh");
                json_response(StatusCode::OK, &st.issue(&mut tokens, session, access_ttl, refresh_ttl))
            }
            "" => oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "OAU-101", "Parameter [grant_type] is invalid"),
            _ => oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "OAU-250",
                "Unsupported grant type",
            ),
        }
    })
}

async fn revoke(AxState(st): AxState<Shared>, headers: HeaderMap, RawQuery(q): RawQuery, body: Bytes) -> Response {
    st.gated("revoke", Group::Auth, || {
        if let Err(r) = st.client_ok(&headers) {
            return r;
        }
        let mut form = form(&body);
        if let Some(q) = q {
            form.extend(url::form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        let Some(token) = form.get("token") else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "OAU-101", "Parameter [token] is invalid");
        };
        let mut tokens = lock(&st.tokens);
        if let Some(session) = tokens.tokens.get(token).map(|t| t.session) {
            tokens.sessions.entry(session).or_default().revoked = true;
            tracing::debug!(session, "revoked");
        }
        StatusCode::OK.into_response()
    })
}

// ----- call log -----

/// A validated call-log query.
#[derive(Debug)]
struct CallLogQuery {
    date_from: i64,
    date_to: i64,
    /// `None`: no filter; `Some(None)`: any recording; `Some(Some(k))`: recordings of kind `k`.
    recording: Option<Option<RecordingKind>>,
    voice: bool,
    directions: Vec<bool>,
    session_id: Option<String>,
    telephony_session_id: Option<String>,
    extension_number: Option<String>,
    phone_number: Option<String>,
    detailed: bool,
    page: u64,
    per_page: u64,
    /// The query minus `page` and `perPage`, for the navigation URIs.
    rest: Vec<(String, String)>,
}

fn parse_time(v: &str) -> Option<i64> {
    if let Ok(t) = v.parse::<jiff::Timestamp>() {
        return Some(t.as_millisecond());
    }
    // Without a zone: UTC (dates mean midnight).
    let dt = v
        .parse::<jiff::civil::DateTime>()
        .ok()
        .or_else(|| v.parse::<jiff::civil::Date>().ok().map(|d| d.to_datetime(jiff::civil::Time::midnight())))?;
    dt.to_zoned_datetime(jiff::tz::TimeZone::UTC).ok().map(|z| z.timestamp().as_millisecond())
}

fn parse_call_log_query(raw: Option<&str>, now: i64) -> Result<CallLogQuery, Response> {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()).into_owned().collect();
    let one = |name: &str| pairs.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let time = |name: &str| -> Result<Option<i64>, Response> {
        one(name).map(|v| parse_time(v).ok_or_else(|| param_error(name, v))).transpose()
    };
    let bool_param = |name: &str| -> Result<Option<bool>, Response> {
        one(name)
            .map(|v| match v {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(param_error(name, v)),
            })
            .transpose()
    };
    let date_to = time("dateTo")?.unwrap_or(now);
    let date_from = time("dateFrom")?.unwrap_or(date_to - 86_400_000);
    let recording = match one("recordingType") {
        Some("All") => Some(None),
        Some("Automatic") => Some(Some(RecordingKind::Automatic)),
        Some("OnDemand") => Some(Some(RecordingKind::OnDemand)),
        Some(v) => return Err(param_error("recordingType", v)),
        None => match bool_param("withRecording")? {
            Some(true) => Some(None),
            _ => None,
        },
    };
    let _ = bool_param("showDeleted")?;
    let mut types = Vec::new();
    let mut directions = Vec::new();
    for (k, v) in &pairs {
        match (k.as_str(), v.as_str()) {
            ("type", "Voice" | "Fax") => types.push(v.as_str()),
            ("type", _) => return Err(param_error("type", v)),
            ("direction", "Inbound") => directions.push(true),
            ("direction", "Outbound") => directions.push(false),
            ("direction", _) => return Err(param_error("direction", v)),
            _ => {}
        }
    }
    let detailed = match one("view") {
        None | Some("Simple") => false,
        Some("Detailed") => true,
        Some(v) => return Err(param_error("view", v)),
    };
    let page = match one("page") {
        None => 1,
        Some(v) => v.parse::<u64>().ok().filter(|&p| p >= 1).ok_or_else(|| param_error("page", v))?,
    };
    // `max` is documented for perPage; it is taken as the maximum, 1000 (no larger pages).
    let per_page = match one("perPage") {
        None => 100,
        Some("max") => 1000,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|p| (1..=1000).contains(p))
            .ok_or_else(|| param_error("perPage", v))?,
    };
    let rest = pairs.iter().filter(|(k, _)| k != "page" && k != "perPage").cloned().collect();
    Ok(CallLogQuery {
        date_from,
        date_to,
        recording,
        voice: types.is_empty() || types.contains(&"Voice"),
        directions,
        session_id: one("sessionId").map(String::from),
        telephony_session_id: one("telephonySessionId").map(String::from),
        extension_number: one("extensionNumber").map(String::from),
        phone_number: one("phoneNumber").map(String::from),
        detailed,
        page,
        per_page,
        rest,
    })
}

impl CallLogQuery {
    fn matches(&self, c: &Call) -> bool {
        if c.start_ms < self.date_from || c.start_ms >= self.date_to || !self.voice {
            return false;
        }
        match (&self.recording, &c.recording) {
            (None, _) => {}
            (Some(_), None) => return false,
            (Some(Some(kind)), Some(r)) if r.kind != *kind => return false,
            _ => {}
        }
        if !self.directions.is_empty() && !self.directions.contains(&c.inbound) {
            return false;
        }
        if self.session_id.as_ref().is_some_and(|s| *s != c.session_id) {
            return false;
        }
        if self.telephony_session_id.as_ref().is_some_and(|s| *s != c.telephony_session_id) {
            return false;
        }
        if self.extension_number.as_ref().is_some_and(|n| n != c.extension().number) {
            return false;
        }
        if let Some(n) = &self.phone_number {
            let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
            let want = digits(n);
            let hit = [&c.from, &c.to]
                .iter()
                .any(|p| p.phone_number.as_deref().is_some_and(|pn| !want.is_empty() && digits(pn).contains(&want)));
            if !hit {
                return false;
            }
        }
        true
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PartyOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    phone_number: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extension_number: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extension_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<&'a str>,
}

impl<'a> From<&'a Party> for PartyOut<'a> {
    fn from(p: &'a Party) -> Self {
        PartyOut {
            phone_number: p.phone_number.as_deref(),
            extension_number: p.extension_number,
            extension_id: p.extension_id,
            name: p.name.as_deref(),
            location: p.location,
        }
    }
}

#[derive(Serialize)]
struct ExtensionOut {
    uri: String,
    id: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RecordingOut<'a> {
    uri: String,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    content_uri: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LegOut<'a> {
    start_time: &'a str,
    duration: u32,
    duration_ms: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    direction: &'static str,
    action: &'static str,
    result: &'static str,
    reason: &'static str,
    reason_description: &'static str,
    from: PartyOut<'a>,
    to: PartyOut<'a>,
    extension: &'a ExtensionOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    recording: Option<&'a RecordingOut<'a>>,
    leg_type: &'static str,
    master: bool,
    telephony_session_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RecordOut<'a> {
    uri: String,
    id: &'a str,
    session_id: &'a str,
    telephony_session_id: &'a str,
    start_time: &'a str,
    duration: u32,
    duration_ms: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    direction: &'static str,
    action: &'static str,
    result: &'static str,
    reason: &'static str,
    reason_description: &'static str,
    from: PartyOut<'a>,
    to: PartyOut<'a>,
    extension: &'a ExtensionOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    recording: Option<&'a RecordingOut<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    short_recording: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_modified_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    legs: Option<Vec<LegOut<'a>>>,
}

/// Serializes one record (and its legs in the Detailed view) into `out`.
fn write_record(
    st: &State,
    c: &Call,
    account_level: bool,
    detailed: bool,
    api: &str,
    media: &str,
    out: &mut Vec<u8>,
) {
    let ext = c.extension();
    let start = fmt_ms(c.start_ms);
    if c.sparse {
        let mut v = json!({"id": c.call_log_id, "sessionId": c.session_id, "startTime": start});
        if let Some(r) = &c.recording {
            v["recording"] = json!({
                "id": r.id,
                "contentUri": format!("{media}/restapi/v1.0/account/{ACCOUNT_ID}/recording/{}/content", r.id),
            });
        }
        let _ = serde_json::to_writer(out, &v);
        return;
    }
    let extension = ExtensionOut {
        uri: format!("{api}/restapi/v1.0/account/{ACCOUNT_ID}/extension/{}", ext.id),
        id: ext.id.parse().unwrap_or(0),
    };
    let recording = c.recording.as_ref().map(|r| RecordingOut {
        uri: format!("{api}/restapi/v1.0/account/{ACCOUNT_ID}/recording/{}", r.id),
        id: &r.id,
        kind: r.kind.as_str(),
        content_uri: format!("{media}/restapi/v1.0/account/{ACCOUNT_ID}/recording/{}/content", r.id),
    });
    let direction = if c.inbound { "Inbound" } else { "Outbound" };
    let action = if c.inbound { "Phone Call" } else { "VoIP Call" };
    let internal = c.from.phone_number.is_none() || c.to.phone_number.is_none();
    let leg = |master: bool| LegOut {
        start_time: &start,
        duration: c.duration_s,
        duration_ms: u64::from(c.duration_s) * 1000,
        kind: "Voice",
        direction,
        action,
        result: c.outcome.result(),
        reason: c.outcome.reason(),
        reason_description: c.outcome.description(),
        from: (&c.from).into(),
        to: (&c.to).into(),
        extension: &extension,
        recording: if master { recording.as_ref() } else { None },
        leg_type: match (master, internal, c.inbound) {
            (false, ..) => "FindMe",
            (true, true, _) => "Accept",
            (true, false, true) => "PstnToSip",
            (true, false, false) => "SipToPstnMetered",
        },
        master,
        telephony_session_id: &c.telephony_session_id,
    };
    let legs = detailed.then(|| {
        let mut legs = vec![leg(true)];
        if c.two_legs {
            legs.push(leg(false));
        }
        legs
    });
    let uri = if account_level {
        format!("{api}/restapi/v1.0/account/{ACCOUNT_ID}/call-log/{}?view={}", c.call_log_id, view_name(detailed))
    } else {
        format!(
            "{api}/restapi/v1.0/account/{ACCOUNT_ID}/extension/{}/call-log/{}?view={}",
            ext.id,
            c.call_log_id,
            view_name(detailed)
        )
    };
    let record = RecordOut {
        uri,
        id: &c.call_log_id,
        session_id: &c.session_id,
        telephony_session_id: &c.telephony_session_id,
        start_time: &start,
        duration: c.duration_s,
        duration_ms: u64::from(c.duration_s) * 1000,
        kind: "Voice",
        direction,
        action,
        result: c.outcome.result(),
        reason: c.outcome.reason(),
        reason_description: c.outcome.description(),
        from: (&c.from).into(),
        to: (&c.to).into(),
        extension: &extension,
        recording: recording.as_ref(),
        short_recording: c.short_recording,
        last_modified_time: detailed.then(|| fmt_ms(st.visible_ms(c))),
        legs,
    };
    // Serializing plain structs into a Vec cannot fail.
    let _ = serde_json::to_writer(out, &record);
}

fn view_name(detailed: bool) -> &'static str {
    if detailed { "Detailed" } else { "Simple" }
}

/// Which call log a request reads.
#[derive(Clone, Copy)]
enum Scope {
    Account,
    Extension(usize),
}

fn page_uri(base_path: &str, rest: &[(String, String)], page: u64, per_page: u64) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in rest {
        s.append_pair(k, v);
    }
    s.append_pair("page", &page.to_string());
    s.append_pair("perPage", &per_page.to_string());
    format!("{base_path}?{}", s.finish())
}

fn call_log_page(st: &State, scope: Scope, headers: &HeaderMap, path: &str, raw: Option<&str>) -> Response {
    let now = now_ms();
    let q = match parse_call_log_query(raw, now) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let (api, media) = bases(st, headers);
    let data = st.data.read().unwrap_or_else(|e| e.into_inner());
    let mut hits: Vec<(i64, usize)> = data
        .calls
        .iter()
        .enumerate()
        .filter(|(_, c)| st.visible_ms(c) <= now)
        .filter(|(_, c)| match scope {
            Scope::Account => true,
            Scope::Extension(owner) => c.owner == owner,
        })
        .filter(|(_, c)| q.matches(c))
        .map(|(i, c)| (c.start_ms, i))
        .collect();
    // Newest first; ties broken by call-log id so pages are stable.
    hits.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| data.calls[a.1].call_log_id.cmp(&data.calls[b.1].call_log_id)));
    let total = hits.len() as u64;
    let overlap = if q.page > 1 { st.faults().page_overlap } else { 0 };
    let first = (q.page - 1).saturating_mul(q.per_page).saturating_sub(overlap);
    let page_hits = hits.iter().skip(first.min(total) as usize).take(q.per_page as usize);
    let account_level = matches!(scope, Scope::Account);

    let mut out = Vec::with_capacity(1024 + q.per_page.min(total) as usize * 1400);
    out.extend_from_slice(b"{\"uri\":");
    let base_path = format!("{api}{path}");
    let _ = serde_json::to_writer(&mut out, &page_uri(&base_path, &q.rest, q.page, q.per_page));
    out.extend_from_slice(b",\"records\":[");
    let mut n = 0u64;
    for &(_, i) in page_hits {
        if n > 0 {
            out.push(b',');
        }
        write_record(st, &data.calls[i], account_level, q.detailed, &api, &media, &mut out);
        n += 1;
    }
    drop(data);
    out.extend_from_slice(b"],\"paging\":");
    let mut paging = json!({"page": q.page, "perPage": q.per_page});
    if n > 0 {
        paging["pageStart"] = json!(first);
        paging["pageEnd"] = json!(first + n - 1);
    }
    let _ = serde_json::to_writer(&mut out, &paging);
    let last_page = total.div_ceil(q.per_page).max(1);
    let mut nav = serde_json::Map::new();
    let link = |p: u64| json!({"uri": page_uri(&base_path, &q.rest, p, q.per_page)});
    nav.insert("firstPage".into(), link(1));
    if first + n < total {
        nav.insert("nextPage".into(), link(q.page + 1));
    }
    if q.page > 1 {
        nav.insert("previousPage".into(), link((q.page - 1).min(last_page)));
    }
    nav.insert("lastPage".into(), link(last_page));
    out.extend_from_slice(b",\"navigation\":");
    let _ = serde_json::to_writer(&mut out, &nav);
    out.push(b'}');

    if st.roll(st.faults().malformed_json_fraction) {
        st.fault_injected();
        out.truncate(out.len() / 2);
        tracing::debug!("malformed call-log page injected");
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json;charset=UTF-8")], out).into_response()
}

fn call_log_record(st: &State, scope: Scope, id: &str, headers: &HeaderMap, raw: Option<&str>) -> Response {
    let detailed = match raw.and_then(|r| url::form_urlencoded::parse(r.as_bytes()).find(|(k, _)| k == "view")) {
        None => false,
        Some((_, v)) if v == "Simple" => false,
        Some((_, v)) if v == "Detailed" => true,
        Some((_, v)) => return param_error("view", &v),
    };
    let (api, media) = bases(st, headers);
    let now = now_ms();
    let data = st.data.read().unwrap_or_else(|e| e.into_inner());
    let found = data.calls.iter().find(|c| {
        c.call_log_id == id
            && st.visible_ms(c) <= now
            && match scope {
                Scope::Account => true,
                Scope::Extension(o) => c.owner == o,
            }
    });
    let Some(call) = found else { return not_found("callRecordId", id) };
    let mut out = Vec::with_capacity(2048);
    write_record(st, call, matches!(scope, Scope::Account), detailed, &api, &media, &mut out);
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json;charset=UTF-8")], out).into_response()
}

/// Resolves `{accountId}/extension/{extensionId}`; `Err` is the answer.
fn extension_scope(st: &State, account: &str, ext: &str) -> Result<Scope, Response> {
    if !account_ok(account) {
        return Err(not_found("accountId", account));
    }
    let id = if ext == "~" { OWNER_EXTENSION_ID } else { ext };
    let Some(index) = EXTENSIONS.iter().position(|e| e.id == id) else {
        return Err(not_found("extensionId", ext));
    };
    if index != 0 && !st.cfg.admin {
        return Err(permission_denied());
    }
    Ok(Scope::Extension(index))
}

fn permission_denied() -> Response {
    rc_error(
        StatusCode::FORBIDDEN,
        "CMN-408",
        "In order to call this API endpoint, user needs to have [ReadCompanyCallLog] permission for requested resource.",
    )
}

async fn account_call_log(
    AxState(st): AxState<Shared>,
    Path(account): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    RawQuery(q): RawQuery,
) -> Response {
    st.gated("account-call-log", Group::Heavy, || {
        if let Err(r) = st.authorize(&headers, None) {
            return r;
        }
        if !account_ok(&account) {
            return not_found("accountId", &account);
        }
        if !st.cfg.admin {
            return permission_denied();
        }
        call_log_page(&st, Scope::Account, &headers, uri.path(), q.as_deref())
    })
}

async fn account_call_log_record(
    AxState(st): AxState<Shared>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    st.gated("account-call-log", Group::Heavy, || {
        if let Err(r) = st.authorize(&headers, None) {
            return r;
        }
        if !account_ok(&account) {
            return not_found("accountId", &account);
        }
        if !st.cfg.admin {
            return permission_denied();
        }
        call_log_record(&st, Scope::Account, &id, &headers, q.as_deref())
    })
}

async fn extension_call_log(
    AxState(st): AxState<Shared>,
    Path((account, ext)): Path<(String, String)>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    RawQuery(q): RawQuery,
) -> Response {
    st.gated("extension-call-log", Group::Heavy, || {
        if let Err(r) = st.authorize(&headers, None) {
            return r;
        }
        match extension_scope(&st, &account, &ext) {
            Ok(scope) => call_log_page(&st, scope, &headers, uri.path(), q.as_deref()),
            Err(r) => r,
        }
    })
}

async fn extension_call_log_record(
    AxState(st): AxState<Shared>,
    Path((account, ext, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    st.gated("extension-call-log", Group::Heavy, || {
        if let Err(r) = st.authorize(&headers, None) {
            return r;
        }
        match extension_scope(&st, &account, &ext) {
            Ok(scope) => call_log_record(&st, scope, &id, &headers, q.as_deref()),
            Err(r) => r,
        }
    })
}

// ----- recordings -----

async fn recording_meta(
    AxState(st): AxState<Shared>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    st.gated("recording-meta", Group::Heavy, || {
        if let Err(r) = st.authorize(&headers, None) {
            return r;
        }
        if !account_ok(&account) {
            return not_found("accountId", &account);
        }
        match st.recording(&id) {
            Some((audio, visible, _, duration)) if visible <= now_ms() => {
                let (api, media) = bases(&st, &headers);
                json_response(
                    StatusCode::OK,
                    &json!({
                        "uri": format!("{api}/restapi/v1.0/account/{ACCOUNT_ID}/recording/{id}"),
                        "id": id,
                        "contentUri": format!("{media}/restapi/v1.0/account/{ACCOUNT_ID}/recording/{id}/content"),
                        "contentType": st.content_type(&id, audio),
                        "duration": duration,
                    }),
                )
            }
            _ => not_found("recordingId", &id),
        }
    })
}

/// Bytes produced per body chunk.
const CHUNK: u64 = 256 * 1024;

/// The body of a media response: generated chunk by chunk, with the speed cap and the cuts
/// (in order of `at`; a cut that another response fired first is passed over).
fn media_body(st: Shared, audio: AudioSpec, start: u64, end: u64, cuts: Vec<Cut>, rate: Option<u64>) -> Body {
    struct S {
        st: Shared,
        audio: AudioSpec,
        pos: u64,
        end: u64,
        sent: u64,
        /// Pending cuts, the next one last.
        cuts: Vec<Cut>,
        rate: Option<u64>,
        began: Instant,
        done: bool,
    }
    let mut cuts = cuts;
    cuts.sort_unstable_by_key(|c| std::cmp::Reverse(c.at));
    let s = S { st, audio, pos: start, end, sent: 0, cuts, rate, began: Instant::now(), done: false };
    let stream = futures_util::stream::unfold(s, |mut s| async move {
        if s.done || s.pos >= s.end {
            return None;
        }
        while s.cuts.last().is_some_and(|c| s.sent >= c.at) {
            if s.cuts.pop().is_some_and(|c| c.claim()) {
                // Pause first so hyper flushes the headers and bytes already produced: the client
                // must see a response that breaks off, not a connection that never answered.
                tokio::time::sleep(Duration::from_millis(50)).await;
                s.done = true;
                s.st.fault_injected();
                tracing::debug!(sent = s.sent, "media connection cut");
                return Some((Err(std::io::Error::other("emulated connection drop")), s));
            }
        }
        let mut n = (s.end - s.pos).min(CHUNK);
        if let Some(c) = s.cuts.last() {
            n = n.min(c.at - s.sent);
        }
        if let Some(rate) = s.rate.filter(|&r| r > 0) {
            n = n.min((rate / 20).max(512));
            let due = s.began + Duration::from_secs_f64(s.sent as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let mut buf = vec![0u8; n as usize];
        s.audio.fill(s.pos, &mut buf);
        s.pos += n;
        s.sent += n;
        s.st.bytes_served.fetch_add(n, Ordering::Relaxed);
        Some((Ok::<Bytes, std::io::Error>(Bytes::from(buf)), s))
    });
    Body::from_stream(stream)
}

/// The content type of a recording served with quirks `q`.
fn content_type(codec: Codec, q: &MediaQuirks) -> &'static str {
    match codec {
        Codec::Wav if q.x_wav => "audio/x-wav",
        c => c.content_type(),
    }
}

async fn recording_content(
    AxState(st): AxState<Shared>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    *lock(&st.stats).media_by_recording.entry(id.clone()).or_default() += 1;
    let st2 = st.clone();
    st.gated("recording-content", Group::Heavy, move || {
        let params: HashMap<String, String> =
            url::form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()).into_owned().collect();
        if let Err(r) = st2.authorize(&headers, params.get("access_token").map(String::as_str)) {
            return r;
        }
        if !account_ok(&account) {
            return not_found("accountId", &account);
        }
        let Some((audio, _, fetchable, _)) = st2.recording(&id).filter(|r| r.2 <= now_ms()) else {
            return not_found("recordingId", &id);
        };
        let len = audio.len();
        let quirks = st2.quirks_of(&id, len);
        match st2.quirks.gate(&id, &quirks) {
            Gate::NotFound => {
                tracing::debug!(recording = %id, "404: still processed (quirk)");
                return not_found("recordingId", &id);
            }
            Gate::ServerError(n) => {
                tracing::debug!(recording = %id, "5xx (quirk)");
                st2.fault_injected();
                return server_error(n);
            }
            Gate::Serve => {}
        }
        let (status, start, end) = match quirks.answer(parse_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), len)) {
            Answer::Whole => (StatusCode::OK, 0, len),
            Answer::Part { start, end, .. } => (StatusCode::PARTIAL_CONTENT, start, end),
            Answer::Unsatisfiable { content_range } => {
                let mut r = rc_error(StatusCode::RANGE_NOT_SATISFIABLE, "CMN-107", "Requested range not satisfiable");
                if content_range {
                    r.headers_mut().insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"));
                }
                return r;
            }
        };
        let faults = st2.faults();
        let body_len = end - start;
        let fraction = if faults.drop_after_bytes.is_some() && faults.drop_fraction <= 0.0 { 1.0 } else { faults.drop_fraction };
        let fault_cut = st2.roll(fraction).then(|| faults.drop_after_bytes.unwrap_or(body_len / 2)).filter(|&c| c < body_len);
        let mut cuts = st2.quirks.cuts(&id, &quirks, start, end);
        cuts.extend(fault_cut.map(Cut::always));
        tracing::debug!(recording = %id, start, end, fetchable, ?quirks, "media");
        let mut builder = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type(audio.codec, &quirks));
        if !quirks.chunked {
            builder = builder.header(header::CONTENT_LENGTH, body_len);
        }
        if quirks.range != RangeMode::Ignore {
            builder = builder.header(header::ACCEPT_RANGES, "bytes");
        }
        if status == StatusCode::PARTIAL_CONTENT {
            let total = if quirks.range == RangeMode::UnknownTotal { "*".to_string() } else { len.to_string() };
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{total}", end - 1));
        }
        if let Some(disposition) = params.get("contentDisposition") {
            let kind = if disposition.eq_ignore_ascii_case("attachment") { "attachment" } else { "inline" };
            let value = match params.get("contentDispositionFilename") {
                Some(name) => format!("{kind}; filename=\"{}\"", name.replace(['"', '\\', '\r', '\n'], "_")),
                None => kind.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                builder = builder.header(header::CONTENT_DISPOSITION, v);
            }
        }
        // The slower of the account-wide and the recording's speed cap.
        let rate = faults.max_bytes_per_sec.into_iter().chain(quirks.bytes_per_sec).min();
        builder
            .body(media_body(st2.clone(), audio, start, end, cuts, rate))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    })
}

// ----- plain HTTP directory of the recordings (not a RingCentral path) -----

/// Path of the plain directory listing on the media host.
pub(crate) const FILES_PATH: &str = "/__emulator/files/";

impl State {
    /// Counts one request to a non-RingCentral endpoint (no rate group).
    fn count(&self, endpoint: &str) {
        *lock(&self.stats).by_endpoint.entry(endpoint.to_string()).or_default() += 1;
    }

    /// `(recording id, extension, size, call start ms)` of every recording fetchable at `now`,
    /// sorted by id.
    fn fetchable_files(&self, now: i64) -> Vec<(String, &'static str, u64, i64)> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = data
            .calls
            .iter()
            .filter(|c| self.fetchable_ms(c) <= now)
            .filter_map(|c| {
                let r = c.recording.as_ref()?;
                Some((r.id.clone(), r.audio.codec.extension(), r.audio.len(), c.start_ms))
            })
            .collect();
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// `Last-Modified` for a file: the end of its call (HTTP-date).
fn http_date(ms: i64) -> String {
    ts(ms).strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// `GET /__emulator/files/`: an Apache-style HTML index, one `<a href="<id>.<ext>">` per
/// recording that can be fetched now, with its size in the text (peers take sizes from `HEAD`).
/// Links are relative, as in Apache's indexes: httpdirfs asks for the index without the slash and
/// appends the links to its own URL; a browser needs the slash.
async fn files_index(AxState(st): AxState<Shared>) -> Response {
    st.count("files-index");
    st.advance_live(now_ms());
    let files = st.fetchable_files(now_ms());
    let mut html = String::with_capacity(200 + files.len() * 120);
    html.push_str("<!DOCTYPE html>\n<html><head><title>Index of /__emulator/files/</title></head><body>\n");
    html.push_str("<h1>Index of /__emulator/files/</h1>\n<pre>\n");
    for (id, ext, len, start) in &files {
        // Ids are digits and extensions ASCII: nothing to escape.
        html.push_str(&format!("<a href=\"{id}.{ext}\">{id}.{ext}</a> {} {len}\n", fmt_ms(*start)));
    }
    html.push_str("</pre></body></html>\n");
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// `GET`/`HEAD /__emulator/files/<id>.<ext>`: the recording's bytes (the same as its
/// `contentUri`), with `Content-Length`, `Accept-Ranges`, `Range` -> 206 / 416 and
/// `Last-Modified`. Plain HTTP: no auth, no rate limit, no faults, no media behaviour settings.
async fn files_get(AxState(st): AxState<Shared>, method: axum::http::Method, Path(name): Path<String>, headers: HeaderMap) -> Response {
    let head = method == axum::http::Method::HEAD;
    st.count(if head { "files-head" } else { "files-get" });
    st.advance_live(now_ms());
    let plain_404 = || (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain")], "not found\n").into_response();
    let Some((id, ext)) = name.rsplit_once('.') else { return plain_404() };
    let Some((audio, _, fetchable, _)) = st.recording(id).filter(|r| r.2 <= now_ms()) else { return plain_404() };
    if ext != audio.codec.extension() {
        return plain_404();
    }
    let len = audio.len();
    let (status, start, end) = match parse_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), len) {
        RangeReq::Whole => (StatusCode::OK, 0, len),
        RangeReq::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b),
        RangeReq::Unsatisfiable => {
            return (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{len}"))]).into_response();
        }
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, audio.codec.content_type())
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::LAST_MODIFIED, http_date(fetchable));
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", end - 1));
    }
    // HEAD: the headers only (hyper keeps an explicit Content-Length on an empty HEAD answer).
    let body = if head { Body::empty() } else { media_body(st.clone(), audio, start, end, Vec::new(), None) };
    builder.body(body).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

// ----- emulator endpoints and routers -----

async fn stats(AxState(st): AxState<Shared>) -> Response {
    json_response(StatusCode::OK, &st.stats())
}

async fn fallback(uri: axum::http::Uri) -> Response {
    not_found("path", uri.path())
}

fn api_router(st: Shared) -> Router {
    Router::new()
        .route("/restapi/oauth/token", post(token))
        .route("/restapi/oauth/revoke", post(revoke))
        .route("/restapi/v1.0/account/{account}/call-log", get(account_call_log))
        .route("/restapi/v1.0/account/{account}/call-log/{id}", get(account_call_log_record))
        .route("/restapi/v1.0/account/{account}/extension/{ext}/call-log", get(extension_call_log))
        .route("/restapi/v1.0/account/{account}/extension/{ext}/call-log/{id}", get(extension_call_log_record))
        .route("/restapi/v1.0/account/{account}/recording/{id}", get(recording_meta))
        .route("/__emulator/stats", get(stats))
        .fallback(fallback)
        .with_state(st)
}

fn media_router(st: Shared) -> Router {
    Router::new()
        .route("/restapi/v1.0/account/{account}/recording/{id}/content", get(recording_content))
        .route(FILES_PATH, get(files_index))
        // httpdirfs asks for the directory without its trailing slash.
        .route(FILES_PATH.trim_end_matches('/'), get(files_index))
        .route("/__emulator/files/{name}", get(files_get))
        .fallback(fallback)
        .with_state(st)
}

/// The service's error for the `unreachable` fault: hyper closes the connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("emulated unreachable host")]
struct Unreachable;

async fn accept_loop(listener: TcpListener, router: Router, st: Shared, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                if st.unreachable() {
                    st.fault_injected();
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let (router, st) = (router.clone(), st.clone());
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let mut router = router.clone();
                    let st = st.clone();
                    async move {
                        if st.unreachable() {
                            st.fault_injected();
                            return Err(Unreachable);
                        }
                        if st.hanging() {
                            st.fault_injected();
                            while st.hanging() {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                        let resp: Result<Response, Infallible> = router.call(req.map(Body::new)).await;
                        Ok(resp.unwrap_or_else(|e| match e {}))
                    }
                });
                conns.spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = conn.await {
                        tracing::trace!(error = %e, "connection ended");
                    }
                });
            }
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// Serves both hosts until `shutdown` completes.
pub(crate) async fn serve(
    st: Shared,
    api: TcpListener,
    media: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = watch::channel(false);
    let a = tokio::spawn(accept_loop(api, api_router(st.clone()), st.clone(), rx.clone()));
    let m = tokio::spawn(accept_loop(media, media_router(st.clone()), st.clone(), rx));
    shutdown.await;
    let _ = tx.send(true);
    let _ = a.await;
    let _ = m.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-01T00:00:01.500Z"), Some(1500));
        assert_eq!(parse_time("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(fmt_ms(1500), "1970-01-01T00:00:01.500Z");
    }
}
