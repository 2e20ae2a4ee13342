//! The request budget: one pacer per RingCentral rate group, shared by every clone of the client.
//!
//! RingCentral limits requests per user, per app and per rate group (Heavy: 10 a minute, Auth: 5
//! a minute, ...). Going over earns a 429 and a penalty that *every further request in the group
//! restarts*. Requests, not bytes, are the scarce resource, so all of them go through here.
//!
//! # Algorithm
//!
//! Each group keeps:
//! - `limit` requests per `window` (contract defaults until the service tells us better through
//!   `X-Rate-Limit-Limit` / `X-Rate-Limit-Window`);
//! - a *send log*: one entry per granted request. While the request is in flight its entry is
//!   *open* and always counts; once the answer's headers have arrived (the permit is dropped) the
//!   entry is closed and stamped with that arrival time, and it counts while it is younger than
//!   `window + margin`;
//! - an optional *hold*: after a 429 nothing in the group is sent until `Retry-After` (30 s when
//!   missing) has passed, counted from when the 429 arrived. The service started its penalty when
//!   it answered, so our hold always ends after the service's;
//! - a priority queue of waiters, ordered by (`Priority`, arrival), so Interactive goes before
//!   Background and waiters of one priority are FIFO.
//!
//! Only the head of the queue may be granted. It is granted when there is no hold and fewer than
//! `limit` sends are in the log; otherwise it sleeps until the hold ends or until the oldest
//! logged send leaves the log. Keeping at most `limit` sends in *any* interval of length
//! `window + margin` (a sliding log) satisfies both a fixed-window and a sliding-window counter on
//! the service side.
//!
//! Why entries are stamped with the *answer's* arrival and not the send: the service counts a
//! request when it arrives, somewhere between our send and its answer. A log of send times looks
//! older than the service's count whenever one request is slow to arrive (a new connection, a
//! loaded machine): with a 1 s test window, a first request that took 300 ms to reach the
//! emulator let an eleventh request into the same window and earned a 429. The answer's arrival
//! is never earlier than the service's count, so a log of answer times can only be more
//! conservative than the service, whatever the latency. The cost is one round trip per window
//! of throughput, nothing next to a 60 s window. The margin (a tenth of the window,
//! 250 ms ..= 2 s) is left for timer slack.
//!
//! Until the group has seen its first answer, only one request is in flight: the limits may be
//! lower than the defaults, and one round trip is a cheap price for learning them.
//!
//! `X-Rate-Limit-Remaining` (of answers other than 429) corrects the log when the service has counted more than we have
//! (another process with the same credentials, or a restart): the difference is added as sends
//! stamped "now", which is conservative.
//!
//! Every retry acquires a new permit, so retries spend budget like any other request.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::HeaderMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Priority;

/// RingCentral's rate groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RateGroup {
    /// 50 requests a minute.
    Light,
    /// 40 requests a minute.
    Medium,
    /// 10 requests a minute: call log, recording metadata, recording content.
    Heavy,
    /// 5 requests a minute: token, revoke.
    Auth,
}

impl RateGroup {
    /// All groups, in index order.
    pub const ALL: [RateGroup; 4] = [
        RateGroup::Light,
        RateGroup::Medium,
        RateGroup::Heavy,
        RateGroup::Auth,
    ];

    /// The name the service uses in `X-Rate-Limit-Group`.
    pub fn name(self) -> &'static str {
        match self {
            RateGroup::Light => "Light",
            RateGroup::Medium => "Medium",
            RateGroup::Heavy => "Heavy",
            RateGroup::Auth => "Auth",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The contract's limits, used until the service tells us its own.
    pub fn default_limits(self) -> (u32, Duration) {
        let per_minute = match self {
            RateGroup::Light => 50,
            RateGroup::Medium => 40,
            RateGroup::Heavy => 10,
            RateGroup::Auth => 5,
        };
        (per_minute, Duration::from_secs(60))
    }

    fn from_name(name: &str) -> Option<RateGroup> {
        RateGroup::ALL
            .into_iter()
            .find(|g| g.name().eq_ignore_ascii_case(name.trim()))
    }
}

/// What a request is for, as [`GroupPacer::snapshot`] shows the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestKind {
    /// Call-log pages, session lookups, recording metadata.
    Listing,
    /// Recording content.
    Download,
    /// Token requests.
    Auth,
    /// Anything else.
    Other,
}

impl RequestKind {
    /// `listing`, `download`, `auth`, `other`.
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Listing => "listing",
            RequestKind::Download => "download",
            RequestKind::Auth => "auth",
            RequestKind::Other => "other",
        }
    }
}

/// What the last `X-Rate-Limit-*` headers of a group said (each may be missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerCount {
    pub limit: Option<u32>,
    pub remaining: Option<u32>,
    pub window: Option<Duration>,
}

/// One group's pacer as it is now ([`GroupPacer::snapshot`]).
#[derive(Debug, Clone)]
pub struct GroupSnapshot {
    pub group: RateGroup,
    /// Requests per `window`, from the service's headers once `learned`, else the contract's.
    pub limit: u32,
    pub window: Duration,
    pub learned: bool,
    /// How long an answered request keeps counting here: the window and the pacer's margin.
    pub keep: Duration,
    /// Requests counted against `limit` now: in flight, and answered less than `keep` ago.
    pub used: u32,
    /// Permits granted and not yet answered.
    pub in_flight: u32,
    /// What is left of the hold after a 429 (`Retry-After`), if one is in force.
    pub hold: Option<Duration>,
    /// The waiters, in the order they will be granted.
    pub waiting: Vec<(Priority, RequestKind)>,
    /// When each answered request still counted stops counting, soonest first.
    pub frees_in: Vec<Duration>,
    /// Entries of the log still open (in flight).
    pub open: u32,
    /// No answer seen yet: one request at a time.
    pub probing: bool,
    /// Average time from a send to its answer's headers (zero before the first answer).
    pub round_trip: Duration,
    /// The last `X-Rate-Limit-*` headers and how long ago they came.
    pub server: Option<(ServerCount, Duration)>,
}

impl GroupSnapshot {
    /// Requests that could go now if nothing held the group.
    pub fn remaining(&self) -> u32 {
        self.limit.saturating_sub(self.used)
    }

    /// When `n` more requests would be granted, counted from now, if nobody else asks: the
    /// pacer's rule applied to what it holds ([`grant_times`]).
    pub fn grants(&self, n: usize) -> Vec<Duration> {
        grant_times(&Backlog {
            limit: self.limit,
            keep: self.keep,
            hold: self.hold.unwrap_or_default(),
            frees_in: &self.frees_in,
            open: self.open,
            round_trip: self.round_trip,
            n,
        })
    }

    /// When the first waiter will go, if any waits.
    pub fn next_in(&self) -> Option<Duration> {
        if self.waiting.is_empty() {
            return None;
        }
        self.grants(1).first().copied()
    }

    /// The steady rate the pacer allows, per minute (`limit` per `keep`).
    pub fn per_minute(&self) -> f64 {
        f64::from(self.limit) * 60.0 / self.keep.as_secs_f64().max(0.001)
    }
}

/// The input of [`grant_times`].
#[derive(Debug, Clone, Copy)]
pub struct Backlog<'a> {
    pub limit: u32,
    /// How long an answered request counts.
    pub keep: Duration,
    /// Nothing goes before this (a hold after a 429).
    pub hold: Duration,
    /// When each counted, answered request stops counting.
    pub frees_in: &'a [Duration],
    /// Requests in flight: each counts until its answer (expected in `round_trip`) and `keep`
    /// after it.
    pub open: u32,
    pub round_trip: Duration,
    /// Requests to place.
    pub n: usize,
}

/// When each of `n` requests would be granted, from now: the pacer's rule (at most `limit`
/// counted at once; an entry counts from its grant until `keep` after its answer, which comes
/// `round_trip` after the grant; nothing before the hold ends) played forward. Pure arithmetic,
/// the estimate behind `ringfs status`'s "all done in".
pub fn grant_times(b: &Backlog<'_>) -> Vec<Duration> {
    let limit = b.limit.max(1) as usize;
    let mut frees: Vec<Duration> = b.frees_in.to_vec();
    frees.extend((0..b.open).map(|_| b.round_trip + b.keep));
    let mut out = Vec::with_capacity(b.n.min(100_000));
    let mut t = b.hold;
    for _ in 0..b.n.min(100_000) {
        frees.retain(|f| *f > t);
        if frees.len() >= limit {
            frees.sort();
            // The grant waits until enough entries stopped counting for one slot to open.
            t = t.max(frees[frees.len() - limit]);
            frees.retain(|f| *f > t);
        }
        out.push(t);
        frees.push(t + b.round_trip + b.keep);
    }
    out
}

/// Hold applied after a 429 without `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The pacers of all groups. Cloning the client shares this.
#[derive(Debug)]
pub struct Pacers {
    groups: [Arc<GroupPacer>; 4],
}

impl Default for Pacers {
    fn default() -> Self {
        Self::new()
    }
}

impl Pacers {
    /// One pacer per group with contract defaults.
    pub fn new() -> Self {
        Pacers {
            groups: RateGroup::ALL.map(|g| Arc::new(GroupPacer::new(g))),
        }
    }

    /// The pacer of `group`.
    pub fn get(&self, group: RateGroup) -> &Arc<GroupPacer> {
        &self.groups[group.index()]
    }

    /// Learns from the `X-Rate-Limit-*` headers of a response (with `status`) to a request sent
    /// in `group`. When the service names another group, that group learns instead.
    ///
    /// A 429 holds that group for `Retry-After` ([`DEFAULT_RETRY_AFTER`] when absent) *here*,
    /// before the caller reads the body or releases its permit: any later moment leaves a gap in
    /// which a waiter is granted and sends during the penalty, which restarts it on RingCentral.
    /// Returns the hold.
    pub fn observe(&self, group: RateGroup, status: u16, headers: &HeaderMap) -> Option<Duration> {
        let named = header_str(headers, "x-rate-limit-group").and_then(RateGroup::from_name);
        let pacer = self.get(named.unwrap_or(group));
        pacer.observe(status, headers);
        (status == 429).then(|| {
            let d = retry_after(headers).unwrap_or(DEFAULT_RETRY_AFTER);
            pacer.hold(d);
            d
        })
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    let s = header_str(headers, name)?.trim();
    let digits = s.trim_end_matches(|c: char| !c.is_ascii_digit());
    digits.parse().ok()
}

/// Parses `Retry-After` in seconds (HTTP dates are not used by RingCentral; treated as absent).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let s = header_str(headers, "retry-after")?.trim();
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| Duration::from_secs_f64(v.min(24.0 * 3600.0)))
}

/// Pacer of one rate group.
#[derive(Debug)]
pub struct GroupPacer {
    group: RateGroup,
    state: Mutex<State>,
    /// Woken on every change that may let a waiter proceed (grant, release, hold, new head).
    notify: Notify,
}

#[derive(Debug)]
struct State {
    limit: u32,
    window: Duration,
    /// Whether `limit`/`window` came from the service.
    learned: bool,
    /// Granted requests still in flight, and answered ones younger than `window + margin`.
    sends: Vec<Sent>,
    /// Nothing is sent before this instant (after a 429).
    hold_until: Option<Instant>,
    /// Waiters; the first one is the only one that may be granted.
    queue: BTreeSet<(Priority, u64)>,
    /// What each waiter is for, by its id (for [`GroupPacer::snapshot`] only).
    kinds: HashMap<u64, RequestKind>,
    /// The last `X-Rate-Limit-*` headers of an answer other than 429, and when they came.
    last_seen: Option<(ServerCount, Instant)>,
    next_id: u64,
    /// Permits granted and not yet dropped.
    in_flight: u32,
    /// Whether any request of this group has completed (ends the one-at-a-time probing).
    answered: bool,
    /// A moving average of the time from a send to its answer's headers (for estimates only).
    round_trip: Option<Duration>,
}

/// Id used for sends the service counted that we did not make.
const PHANTOM: u64 = u64::MAX;

/// One entry of the send log.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// The permit's id (`PHANTOM` for sends the service told us about).
    id: u64,
    /// The grant (or send) time while open; the answer's arrival once closed.
    at: Instant,
    /// In flight: counts whatever its age.
    open: bool,
}

enum Decision {
    Grant,
    WaitUntil(Instant),
    WaitNotify,
}

/// Slack between our send times and the service's arrival times (latency jitter on a loaded
/// machine can reach tens of milliseconds): a tenth of the window, within 250 ms ..= 2 s.
fn margin(window: Duration) -> Duration {
    (window / 10).clamp(Duration::from_millis(250), Duration::from_secs(2))
}

impl GroupPacer {
    fn new(group: RateGroup) -> Self {
        let (limit, window) = group.default_limits();
        GroupPacer {
            group,
            state: Mutex::new(State {
                limit,
                window,
                learned: false,
                sends: Vec::new(),
                hold_until: None,
                queue: BTreeSet::new(),
                kinds: HashMap::new(),
                last_seen: None,
                next_id: 0,
                in_flight: 0,
                answered: false,
                round_trip: None,
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group this pacer paces.
    pub fn group(&self) -> RateGroup {
        self.group
    }

    /// Current `(limit, window, learned)`.
    pub fn limits(&self) -> (u32, Duration, bool) {
        let s = self.lock();
        (s.limit, s.window, s.learned)
    }

    /// When the current hold ends, if one is in force.
    pub fn held_until(&self) -> Option<Instant> {
        self.lock().hold_until.filter(|h| *h > Instant::now())
    }

    /// What the pacer holds now, for a status display: nothing is sent or changed.
    pub fn snapshot(&self) -> GroupSnapshot {
        let now = Instant::now();
        let s = self.lock();
        let keep = s.window + margin(s.window);
        let mut frees_in: Vec<Duration> = s
            .sends
            .iter()
            .filter(|e| !e.open)
            .map(|e| (e.at + keep).saturating_duration_since(now))
            .filter(|d| !d.is_zero())
            .collect();
        frees_in.sort();
        let open = s.sends.iter().filter(|e| e.open).count() as u32;
        GroupSnapshot {
            group: self.group,
            limit: s.limit,
            window: s.window,
            learned: s.learned,
            keep,
            used: open + frees_in.len() as u32,
            in_flight: s.in_flight,
            hold: s
                .hold_until
                .map(|h| h.saturating_duration_since(now))
                .filter(|d| !d.is_zero()),
            waiting: s
                .queue
                .iter()
                .map(|(p, id)| (*p, s.kinds.get(id).copied().unwrap_or(RequestKind::Other)))
                .collect(),
            frees_in,
            open,
            probing: !s.answered,
            round_trip: s.round_trip.unwrap_or_default(),
            server: s
                .last_seen
                .map(|(c, at)| (c, now.saturating_duration_since(at))),
        }
    }

    /// Waits for the right to send one request. Cancel-safe: dropping the future leaves the queue.
    pub async fn acquire(self: &Arc<Self>, prio: Priority) -> Permit {
        self.acquire_as(prio, RequestKind::Other).await
    }

    /// [`GroupPacer::acquire`] for a request of `kind` (shown by [`GroupPacer::snapshot`]).
    pub async fn acquire_as(self: &Arc<Self>, prio: Priority, kind: RequestKind) -> Permit {
        let key = {
            let mut s = self.lock();
            let id = s.next_id;
            s.next_id += 1;
            s.queue.insert((prio, id));
            s.kinds.insert(id, kind);
            (prio, id)
        };
        let mut guard = QueueGuard {
            pacer: self,
            key,
            granted: false,
        };
        // A new, more urgent waiter may now be the head.
        self.notify.notify_waiters();
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let decision = self.decide(key, Instant::now());
            match decision {
                Decision::Grant => {
                    guard.granted = true;
                    tracing::trace!(group = self.group.name(), ?prio, "pacer: granted");
                    return Permit {
                        pacer: Arc::clone(self),
                        id: key.1,
                    };
                }
                Decision::WaitUntil(t) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t) => {}
                        _ = &mut notified => {}
                    }
                }
                Decision::WaitNotify => notified.await,
            }
        }
    }

    fn decide(&self, key: (Priority, u64), now: Instant) -> Decision {
        let mut s = self.lock();
        if s.queue.first() != Some(&key) {
            return Decision::WaitNotify;
        }
        if let Some(h) = s.hold_until {
            if h > now {
                return Decision::WaitUntil(h);
            }
            s.hold_until = None;
        }
        if !s.answered && s.in_flight > 0 {
            return Decision::WaitNotify;
        }
        let keep = s.window + margin(s.window);
        s.sends
            .retain(|e| e.open || now.saturating_duration_since(e.at) < keep);
        if (s.sends.len() as u64) < u64::from(s.limit.max(1)) {
            s.queue.remove(&key);
            s.kinds.remove(&key.1);
            s.sends.push(Sent {
                id: key.1,
                at: now,
                open: true,
            });
            s.in_flight += 1;
            drop(s);
            // The next waiter becomes the head.
            self.notify.notify_waiters();
            return Decision::Grant;
        }
        // Only closed entries age; when every slot is in flight, a permit's drop wakes us.
        match s.sends.iter().filter(|e| !e.open).map(|e| e.at).min() {
            Some(oldest) => Decision::WaitUntil(oldest + keep),
            None => Decision::WaitNotify,
        }
    }

    /// Holds the whole group for `d` from now (after a 429). Holds only ever get longer.
    pub fn hold(&self, d: Duration) {
        let until = Instant::now() + d;
        {
            let mut s = self.lock();
            s.hold_until = Some(s.hold_until.map_or(until, |h| h.max(until)));
        }
        tracing::debug!(
            group = self.group.name(),
            hold_ms = d.as_millis() as u64,
            "pacer: group on hold"
        );
        self.notify.notify_waiters();
    }

    fn observe(&self, status: u16, headers: &HeaderMap) {
        let limit = header_u64(headers, "x-rate-limit-limit");
        let window = header_u64(headers, "x-rate-limit-window");
        let remaining = header_u64(headers, "x-rate-limit-remaining");
        if limit.is_none() && window.is_none() && remaining.is_none() {
            return;
        }
        let now = Instant::now();
        let mut s = self.lock();
        s.answered = true;
        if let Some(l) = limit.filter(|l| *l > 0) {
            let l = u32::try_from(l).unwrap_or(u32::MAX);
            if l != s.limit || !s.learned {
                tracing::debug!(group = self.group.name(), limit = l, "pacer: learned limit");
            }
            s.limit = l;
            s.learned = true;
        }
        if let Some(w) = window.filter(|w| *w > 0) {
            s.window = Duration::from_secs(w);
            s.learned = true;
        }
        // A 429 says "remaining 0" whatever the window holds (a forced 429 has no penalty and
        // no count behind it); the hold is the answer to a 429, not the send log.
        if status != 429 {
            s.last_seen = Some((
                ServerCount {
                    limit: limit.and_then(|l| u32::try_from(l).ok()),
                    remaining: remaining.and_then(|r| u32::try_from(r).ok()),
                    window: window.map(Duration::from_secs),
                },
                now,
            ));
        }
        if let Some(rem) = remaining.filter(|_| status != 429) {
            let server_used = u64::from(s.limit).saturating_sub(rem);
            let window = s.window;
            let ours = s
                .sends
                .iter()
                .filter(|e| e.open || now.saturating_duration_since(e.at) < window)
                .count() as u64;
            if server_used > ours {
                let extra = (server_used - ours).min(u64::from(s.limit));
                tracing::debug!(
                    group = self.group.name(),
                    extra,
                    "pacer: service counted more sends than we did"
                );
                for _ in 0..extra {
                    s.sends.push(Sent {
                        id: PHANTOM,
                        at: now,
                        open: false,
                    });
                }
            }
        }
        drop(s);
        self.notify.notify_waiters();
    }
}

struct QueueGuard<'a> {
    pacer: &'a GroupPacer,
    key: (Priority, u64),
    granted: bool,
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        if !self.granted {
            let mut s = self.pacer.lock();
            s.queue.remove(&self.key);
            s.kinds.remove(&self.key.1);
            drop(s);
            self.pacer.notify.notify_waiters();
        }
    }
}

/// The right to send one request. Keep it until the response headers have been observed.
#[derive(Debug)]
pub struct Permit {
    pacer: Arc<GroupPacer>,
    id: u64,
}

impl Permit {
    /// Re-stamps the entry to now; call right before the request leaves (kept for the logs'
    /// order; the entry's age counts from the permit's drop).
    pub fn stamp(&self) {
        let now = Instant::now();
        let mut s = self.pacer.lock();
        if let Some(e) = s.sends.iter_mut().find(|e| e.id == self.id) {
            e.at = now;
        }
        drop(s);
        self.pacer.notify.notify_waiters();
    }

    /// The group this permit belongs to.
    pub fn group(&self) -> RateGroup {
        self.pacer.group
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // The answer (or the failure) is here: the service counted this request at or before
        // now, so the entry ages from now on.
        let now = Instant::now();
        let mut s = self.pacer.lock();
        if let Some(e) = s.sends.iter_mut().find(|e| e.id == self.id) {
            let took = now.saturating_duration_since(e.at);
            e.at = now;
            e.open = false;
            s.round_trip = Some(match s.round_trip {
                Some(avg) => (avg * 7 + took) / 8,
                None => took,
            });
        }
        s.in_flight = s.in_flight.saturating_sub(1);
        s.answered = true;
        drop(s);
        self.pacer.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// Teaches a group `limit` per `window_s` seconds.
    fn teach(p: &Pacers, g: RateGroup, limit: u32, window_s: u64) {
        p.observe(
            g,
            200,
            &headers(&[
                ("x-rate-limit-group", g.name()),
                ("x-rate-limit-limit", &limit.to_string()),
                ("x-rate-limit-window", &window_s.to_string()),
            ]),
        );
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_limit_in_any_window() {
        let p = Arc::new(Pacers::new());
        teach(&p, RateGroup::Heavy, 3, 1);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let p = Arc::clone(&p);
            tasks.push(tokio::spawn(async move {
                let permit = p.get(RateGroup::Heavy).acquire(Priority::Background).await;
                permit.stamp();
                let t = Instant::now();
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(permit);
                t
            }));
        }
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap() - start);
        }
        times.sort();
        // Any 4 consecutive sends span more than the window.
        for w in times.windows(4) {
            assert!(w[3] - w[0] >= Duration::from_secs(1), "{times:?}");
        }
        // And the pacer does not dawdle: 10 sends at 3 per (10 ms answer + 1 s + 250 ms margin)
        // need 3 waits.
        assert!(
            *times.last().unwrap() <= Duration::from_millis(3 * 1260 + 50),
            "{times:?}"
        );
    }

    /// The service counts a request when it arrives, anywhere up to its answer. A slow request
    /// (a new connection, a loaded machine) must age from its answer, or the next window opens
    /// early on our side and not on the service's: a 429 seen in CI with a 1 s window.
    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_ages_from_its_arrival_not_its_send() {
        let p = Arc::new(Pacers::new());
        teach(&p, RateGroup::Heavy, 1, 1);
        let g = p.get(RateGroup::Heavy);
        let sent = Instant::now();
        let permit = g.acquire(Priority::Interactive).await;
        permit.stamp();
        tokio::time::sleep(Duration::from_millis(800)).await;
        drop(permit);
        drop(g.acquire(Priority::Interactive).await);
        // 800 ms in flight, then the whole window and its margin.
        assert!(
            sent.elapsed() >= Duration::from_millis(800 + 1250),
            "{:?}",
            sent.elapsed()
        );
        assert!(
            sent.elapsed() < Duration::from_millis(800 + 1250 + 50),
            "{:?}",
            sent.elapsed()
        );
    }

    /// A request in flight longer than the window still holds its slot.
    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_its_slot() {
        let p = Arc::new(Pacers::new());
        teach(&p, RateGroup::Heavy, 1, 1);
        let g = Arc::clone(p.get(RateGroup::Heavy));
        let permit = g.acquire(Priority::Interactive).await;
        let g2 = Arc::clone(&g);
        let second = tokio::spawn(async move { g2.acquire(Priority::Interactive).await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !second.is_finished(),
            "granted while the only slot was in flight"
        );
        drop(permit);
        let t = Instant::now();
        let _second = second.await.unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(1250),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn interactive_goes_first() {
        let p = Arc::new(Pacers::new());
        teach(&p, RateGroup::Heavy, 1, 1);
        let g = Arc::clone(p.get(RateGroup::Heavy));
        let first = g.acquire(Priority::Background).await;
        drop(first);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, prio) in [
            Priority::Background,
            Priority::Background,
            Priority::Interactive,
        ]
        .into_iter()
        .enumerate()
        {
            let g = Arc::clone(&g);
            let order = Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                // Enqueue in index order.
                tokio::time::sleep(Duration::from_millis(i as u64)).await;
                let _permit = g.acquire(prio).await;
                order.lock().unwrap().push(i);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![2, 0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn hold_blocks_the_whole_group() {
        let p = Arc::new(Pacers::new());
        teach(&p, RateGroup::Heavy, 100, 1);
        let g = p.get(RateGroup::Heavy);
        drop(g.acquire(Priority::Interactive).await);
        let start = Instant::now();
        g.hold(Duration::from_secs(5));
        // A shorter hold does not shorten it.
        g.hold(Duration::from_secs(1));
        let _p = g.acquire(Priority::Interactive).await;
        assert!(start.elapsed() >= Duration::from_secs(5));
        assert!(start.elapsed() < Duration::from_millis(5100));
        // Other groups are unaffected.
        let a = Instant::now();
        drop(p.get(RateGroup::Auth).acquire(Priority::Interactive).await);
        assert_eq!(a.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn first_request_probes_alone() {
        let p = Arc::new(Pacers::new());
        let g = Arc::clone(p.get(RateGroup::Heavy));
        let first = g.acquire(Priority::Background).await;
        let g2 = Arc::clone(&g);
        let second = tokio::spawn(async move { g2.acquire(Priority::Background).await });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!second.is_finished());
        // The answer teaches a lower limit: 1 per 5 s.
        p.observe(
            RateGroup::Heavy,
            200,
            &headers(&[("x-rate-limit-limit", "1"), ("x-rate-limit-window", "5")]),
        );
        let t = Instant::now();
        drop(first);
        let _second = second.await.unwrap();
        // The first answer arrived at 2 s; the second waits for it to leave the 5 s (+500 ms) log.
        assert!(
            t.elapsed() >= Duration::from_millis(5500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(g.limits(), (1, Duration::from_secs(5), true));
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_header_adds_unseen_sends() {
        let p = Arc::new(Pacers::new());
        let g = p.get(RateGroup::Heavy);
        let permit = g.acquire(Priority::Interactive).await;
        // The service says 10 per 60 s and only 1 left after our single request: 8 sends by
        // someone else are counted.
        let h = headers(&[
            ("x-rate-limit-limit", "10"),
            ("x-rate-limit-window", "60"),
            ("x-rate-limit-remaining", "1"),
        ]);
        // A 429's "remaining 0" does not fill the log (`Retry-After: 0`: no hold in this test).
        let held = p.observe(
            RateGroup::Heavy,
            429,
            &headers(&[
                ("x-rate-limit-limit", "10"),
                ("x-rate-limit-remaining", "0"),
                ("retry-after", "0"),
            ]),
        );
        assert_eq!(held, Some(Duration::ZERO));
        p.observe(RateGroup::Heavy, 200, &h);
        drop(permit);
        let t = Instant::now();
        drop(g.acquire(Priority::Interactive).await);
        assert_eq!(t.elapsed(), Duration::ZERO);
        drop(g.acquire(Priority::Interactive).await);
        assert!(t.elapsed() >= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_holds_its_named_group_before_the_permit_is_released() {
        let p = Arc::new(Pacers::new());
        teach(&p, RateGroup::Heavy, 10, 60);
        let g = Arc::clone(p.get(RateGroup::Heavy));
        let permit = g.acquire(Priority::Interactive).await;
        permit.stamp();
        // The answer names its group; the hold is in force as soon as it is observed, while the
        // permit is still held (the caller has not even read the body yet), so no waiter woken by
        // the release can slip a request into the penalty.
        let held = p.observe(
            RateGroup::Light,
            429,
            &headers(&[("x-rate-limit-group", "Heavy")]),
        );
        assert_eq!(held, Some(DEFAULT_RETRY_AFTER));
        assert!(
            g.held_until().is_some(),
            "held before the permit is released"
        );
        assert!(
            p.get(RateGroup::Light).held_until().is_none(),
            "the named group is held, not the guessed one"
        );
        let t = Instant::now();
        drop(permit);
        drop(g.acquire(Priority::Interactive).await);
        assert!(t.elapsed() >= DEFAULT_RETRY_AFTER, "{:?}", t.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiter_leaves_the_queue() {
        let p = Arc::new(Pacers::new());
        teach(&p, RateGroup::Heavy, 1, 1);
        let g = Arc::clone(p.get(RateGroup::Heavy));
        drop(g.acquire(Priority::Background).await);
        // An interactive waiter gives up; the background one behind it must still proceed.
        let cancelled =
            tokio::time::timeout(Duration::from_millis(100), g.acquire(Priority::Interactive))
                .await;
        assert!(cancelled.is_err());
        let t = Instant::now();
        drop(g.acquire(Priority::Background).await);
        // It waits out the window plus the pacer's margin (250 ms here), counted from the
        // first grant 100 ms earlier; a stuck queue head would make it wait forever.
        assert!(
            t.elapsed() <= Duration::from_millis(1150),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_snapshot_shows_counts_waiters_holds_and_the_services_word() {
        let p = Arc::new(Pacers::new());
        p.observe(
            RateGroup::Heavy,
            200,
            &headers(&[
                ("x-rate-limit-limit", "2"),
                ("x-rate-limit-window", "1"),
                ("x-rate-limit-remaining", "2"),
            ]),
        );
        let g = Arc::clone(p.get(RateGroup::Heavy));
        let a = g
            .acquire_as(Priority::Interactive, RequestKind::Listing)
            .await;
        drop(g.acquire(Priority::Interactive).await);
        let g2 = Arc::clone(&g);
        let waiter = tokio::spawn(async move {
            g2.acquire_as(Priority::Background, RequestKind::Download)
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = g.snapshot();
        assert_eq!(
            (s.limit, s.window, s.learned),
            (2, Duration::from_secs(1), true)
        );
        assert_eq!((s.used, s.in_flight, s.open, s.remaining()), (2, 1, 1, 0));
        assert_eq!(
            s.waiting,
            vec![(Priority::Background, RequestKind::Download)]
        );
        // The answered one stops counting 1.25 s after its answer (100 ms ago).
        assert_eq!(s.frees_in, vec![Duration::from_millis(1150)]);
        assert_eq!(s.next_in(), Some(Duration::from_millis(1150)));
        let (said, age) = s.server.unwrap();
        assert_eq!(said.remaining, Some(2));
        assert_eq!(age, Duration::from_millis(100));
        // A 429 holds the group: the snapshot shows what is left of it, and the waiter goes
        // once it ends.
        p.observe(RateGroup::Heavy, 429, &headers(&[("retry-after", "5")]));
        let s = g.snapshot();
        assert_eq!(s.hold, Some(Duration::from_secs(5)));
        assert_eq!(s.next_in(), Some(Duration::from_secs(5)));
        drop(a);
        let t = Instant::now();
        drop(waiter.await.unwrap());
        assert_eq!(t.elapsed(), Duration::from_secs(5));
        assert!(g.snapshot().waiting.is_empty());
    }

    #[test]
    fn parses_retry_after_and_group_names() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&headers(&[(
                "retry-after",
                "Wed, 21 Oct 2015 07:28:00 GMT"
            )])),
            None
        );
        assert_eq!(retry_after(&HeaderMap::new()), None);
        assert_eq!(RateGroup::from_name("heavy"), Some(RateGroup::Heavy));
        assert_eq!(RateGroup::from_name("Auth"), Some(RateGroup::Auth));
        assert_eq!(
            header_u64(
                &headers(&[("x-rate-limit-window", "60s")]),
                "x-rate-limit-window"
            ),
            Some(60)
        );
    }
}
