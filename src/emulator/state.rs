//! What both hosts share: the account's calls, the tokens, the rate buckets, the faults and the
//! accounting, in one [`State`] that every handler gets as [`Shared`].
//!
//! The concerns that act on it live in modules of their own and add their methods there (`rate`:
//! the gate, `oauth`: tokens, `files`: the plain directory). This module holds the storage they
//! share and what more than one of them needs: live calls coming due, when a record shows and
//! when its recording can be fetched, the seeded fault draws, the request accounting, and the
//! base URLs a client addressed.
//!
//! Lock order: `data` before `stats` and before the locks of `quirks`; `data` before the `ws`
//! hub's sessions before `stats` (see `ws`); `tokens`, `rate`, `advertised`, `faults` are never
//! held together with another lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use axum::http::{HeaderMap, header};

use super::audio::{AudioSpec, mix64};
use super::data::{ACCOUNT_ID, Call, Generator};
use super::quirks::{PerRecording, content_type};
use super::ws::Hub;
use super::{CallInfo, Config, Faults, MediaQuirks, NewCall, Stats};

pub(super) type Shared = std::sync::Arc<State>;

/// The rate-limit groups. Light and Medium only hold the subscription requests sent over the
/// WebSocket (renew and create).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Group {
    Heavy,
    Auth,
    Light,
    Medium,
}

impl Group {
    /// Number of groups: the length of the per-group arrays of [`State`].
    pub(super) const COUNT: usize = 4;

    pub(super) fn index(self) -> usize {
        self as usize
    }
    pub(super) fn name(self) -> &'static str {
        match self {
            Group::Heavy => "Heavy",
            Group::Auth => "Auth",
            Group::Light => "Light",
            Group::Medium => "Medium",
        }
    }
    /// The value of `X-Rate-Limit-Group`.
    pub(super) fn header(self) -> &'static str {
        match self {
            Group::Heavy => "heavy",
            Group::Auth => "auth",
            Group::Light => "light",
            Group::Medium => "medium",
        }
    }
}

/// One group's fixed window and penalty (counted and enforced in `rate`).
#[derive(Debug, Default)]
pub(super) struct Bucket {
    pub(super) window_start: Option<Instant>,
    pub(super) count: u32,
    pub(super) penalty_until: Option<Instant>,
}

/// Which of the pair a token is: only access tokens open endpoints, only refresh tokens refresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TokenKind {
    Access,
    Refresh,
}

/// One issued token.
#[derive(Debug)]
pub(super) struct Token {
    pub(super) kind: TokenKind,
    pub(super) session: u64,
    /// Tokens of older generations of their session were replaced by a refresh.
    pub(super) generation: u32,
    pub(super) expires: Instant,
}

/// A login: every refresh starts a new generation; a revoke ends it.
#[derive(Debug, Default)]
pub(super) struct Session {
    pub(super) generation: u32,
    pub(super) revoked: bool,
}

/// The issued tokens and their sessions (issued and checked in `oauth`).
#[derive(Debug, Default)]
pub(super) struct Tokens {
    pub(super) tokens: HashMap<String, Token>,
    pub(super) sessions: HashMap<u64, Session>,
    pub(super) next_session: u64,
}

/// The account's calls: the initial data set plus live calls started so far.
pub(super) struct Data {
    pub(super) calls: Vec<Call>,
    pub(super) by_recording: HashMap<String, usize>,
    /// The next live call (not started yet) and its live index.
    pub(super) pending_live: Option<(u64, Call)>,
    /// Calls started with `Emulator::start_call` so far.
    pub(super) injected: u64,
}

/// Shared state of both hosts.
pub(super) struct State {
    pub api_addr: SocketAddr,
    pub media_addr: SocketAddr,
    pub(super) cfg: Config,
    generator: Generator,
    /// Emulator start, Unix ms (live calls are timed from it).
    pub(super) t0_ms: i64,
    /// Distinguishes this run's tokens from any earlier run's.
    pub(super) nonce: u64,
    pub(super) faults: RwLock<Faults>,
    pub(super) data: RwLock<Data>,
    pub(super) tokens: Mutex<Tokens>,
    pub(super) rate: Mutex<[Bucket; Group::COUNT]>,
    /// Per group: when the last 429 was answered and until when its `Retry-After` told the
    /// client to wait (for `Stats::retry_after_violations`).
    pub(super) advertised: Mutex<[Option<(Instant, Instant)>; Group::COUNT]>,
    pub(super) stats: Mutex<Stats>,
    pub(super) bytes_served: AtomicU64,
    pub(super) counter: AtomicU64,
    /// Media quirks set at runtime and what each recording has seen.
    pub(super) quirks: PerRecording,
    /// WebSocket notifications: tokens, sessions, the event schedule, their settings.
    pub(super) ws: Hub,
    /// Recording bytes rendered recently, shared by the responses that send them.
    pub(super) renders: super::audio::RenderCache,
}

/// Memory for rendered recording bytes: a long WAV (57.6 MB) and then some, so downloading one
/// file again renders nothing; 100,000 calls and a full cache stay well under 200 MB.
const RENDER_BUDGET: u64 = 96 << 20;

pub(super) fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

pub(super) fn ts(ms: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// `2019-03-08T22:30:29.505Z`, the call log's format.
pub(super) fn fmt_ms(ms: i64) -> String {
    ts(ms).strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    pub(super) fn new(cfg: Config, api_addr: SocketAddr, media_addr: SocketAddr) -> State {
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
        let initial = calls.len();
        let mut data = Data {
            calls,
            by_recording,
            pending_live: None,
            injected: 0,
        };
        if cfg.live.is_some() {
            data.pending_live = Some((1, Self::live_call(&generator, &cfg, t0_ms, 1)));
        }
        tracing::info!(
            calls = data.calls.len(),
            seed = cfg.seed,
            "emulated account ready"
        );
        State {
            api_addr,
            media_addr,
            faults: RwLock::new(cfg.faults.clone()),
            ws: Hub::new(cfg.notifications.clone(), initial),
            nonce: mix64(
                (t0_ms as u64) ^ (u64::from(std::process::id()) << 32) ^ u64::from(api_addr.port()),
            ),
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
            renders: super::audio::RenderCache::new(RENDER_BUDGET),
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
    pub(super) fn advance_live(&self, now: i64) {
        if self.cfg.live.is_none() {
            return;
        }
        let due = |d: &Data| {
            d.pending_live
                .as_ref()
                .is_some_and(|(_, c)| c.start_ms <= now)
        };
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
            data.pending_live = Some((
                k + 1,
                Self::live_call(&self.generator, &self.cfg, self.t0_ms, k + 1),
            ));
        }
    }

    pub(super) fn visible_ms(&self, c: &Call) -> i64 {
        c.end_ms() + self.cfg.record_delay.as_millis() as i64
    }

    pub(super) fn fetchable_ms(&self, c: &Call) -> i64 {
        self.visible_ms(c) + self.cfg.recording_delay.as_millis() as i64
    }

    /// The content type of a recording (metadata and content say the same).
    pub(super) fn content_type(&self, recording_id: &str, audio: AudioSpec) -> &'static str {
        content_type(audio.codec, &self.quirks_of(recording_id, audio.len()))
    }

    /// The media quirks of a recording of `len` bytes.
    pub(super) fn quirks_of(&self, recording_id: &str, len: u64) -> MediaQuirks {
        self.quirks.resolve(&self.cfg.media, recording_id, len)
    }

    pub(super) fn media_quirks(&self, recording_id: &str) -> MediaQuirks {
        self.advance_live(now_ms());
        let len = self
            .recording(recording_id)
            .map_or(0, |(audio, ..)| audio.len());
        self.quirks_of(recording_id, len)
    }

    pub(super) fn set_media_quirks(&self, recording_id: &str, q: MediaQuirks) {
        self.quirks.set(recording_id, q);
    }

    pub(super) fn stats(&self) -> Stats {
        let mut s = lock(&self.stats).clone();
        s.bytes_served = self.bytes_served.load(Ordering::Relaxed);
        s
    }

    pub(super) fn reset_stats(&self) {
        *lock(&self.stats) = Stats::default();
        self.bytes_served.store(0, Ordering::Relaxed);
    }

    pub(super) fn set_faults(&self, faults: Faults) {
        *self.faults.write().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    pub(super) fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn unreachable(&self) -> bool {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .unreachable
    }

    pub(super) fn hanging(&self) -> bool {
        self.faults.read().unwrap_or_else(|e| e.into_inner()).hang
    }

    pub(super) fn fault_injected(&self) {
        lock(&self.stats).faults_injected += 1;
    }

    /// A seeded draw: true with probability `p`.
    pub(super) fn roll(&self, p: f64) -> bool {
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

    fn call_info(&self, c: &Call) -> CallInfo {
        CallInfo {
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
            content_type: c
                .recording
                .as_ref()
                .map(|r| self.content_type(&r.id, r.audio)),
            recording_len: c.recording.as_ref().map(|r| r.audio.len()),
            visible_at: ts(self.visible_ms(c)),
            fetchable_at: ts(self.fetchable_ms(c)),
        }
    }

    pub(super) fn call_infos(&self) -> Vec<CallInfo> {
        self.advance_live(now_ms());
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        data.calls.iter().map(|c| self.call_info(c)).collect()
    }

    /// Adds a call that starts now (see `Emulator::start_call`).
    pub(super) fn start_call(&self, n: NewCall) -> CallInfo {
        let now = now_ms();
        self.advance_live(now);
        let secs = u32::try_from(n.duration.as_secs())
            .unwrap_or(u32::MAX)
            .max(1);
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        data.injected += 1;
        let index = self.cfg.calls as u64 + 2_000_000 + data.injected;
        let call = self
            .generator
            .injected(index, now, secs, n.recorded, n.inbound);
        if let Some(r) = &call.recording {
            let i = data.calls.len();
            data.by_recording.insert(r.id.clone(), i);
        }
        let info = self.call_info(&call);
        tracing::debug!(session = %call.session_id, secs, "call started on demand");
        data.calls.push(call);
        info
    }

    pub(super) fn recording(&self, id: &str) -> Option<(AudioSpec, i64, i64, u32)> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let call = &data.calls[*data.by_recording.get(id)?];
        let rec = call.recording.as_ref()?;
        Some((
            rec.audio,
            self.visible_ms(call),
            self.fetchable_ms(call),
            call.duration_s,
        ))
    }

    pub(super) fn recording_bytes(&self, id: &str) -> Option<Vec<u8>> {
        self.advance_live(now_ms());
        self.recording(id).map(|(audio, ..)| audio.to_vec())
    }

    pub(super) fn recording_range(&self, id: &str, offset: u64, len: u64) -> Option<Vec<u8>> {
        self.advance_live(now_ms());
        let (audio, ..) = self.recording(id)?;
        let end = offset.saturating_add(len).min(audio.len());
        let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
        audio.fill(offset.min(end), &mut buf);
        Some(buf)
    }
}

/// `http://host:port` of the API as the client addressed it, and the media host beside it.
pub(super) fn bases(state: &State, headers: &HeaderMap) -> (String, String) {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match host {
        Some(host) if !host.is_empty() => {
            let name = if host.starts_with('[') {
                host.split_inclusive(']').next().unwrap_or(host)
            } else {
                host.rsplit_once(':').map_or(host, |(n, _)| n)
            };
            (
                format!("http://{host}"),
                format!("http://{name}:{}", state.media_addr.port()),
            )
        }
        _ => (
            format!("http://{}", state.api_addr),
            format!("http://{}", state.media_addr),
        ),
    }
}

pub(super) fn account_ok(account: &str) -> bool {
    account == "~" || account == ACCOUNT_ID
}
