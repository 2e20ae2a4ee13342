//! The live event feed: what telephony session events say, and what the core does about it.
//!
//! The feed itself (a WebSocket subscription, in `api`) is not known here: it hands the core
//! [`LiveNotice`]s through [`Fs::follow`] (a task reading a channel) or [`Fs::on_notice`] (one
//! notice). What the core does with them:
//!
//! - **Per session**, what the events said: the recording ids named, whether the call has ended
//!   ([`SessionEvent::ended`]: a party `Disconnected` with no reason; `BlindTransfer` and the
//!   like are not the end) and the highest `sequence` seen. Events arrive out of order and
//!   twice, so the merge is monotone: recordings are a union and "ended" never goes back, so
//!   the order does not change the outcome. At most [`SESSIONS_CAP`] sessions are remembered,
//!   the oldest announced forgotten first.
//! - **An ended session with recordings** is fetched: one `find_session` (Heavy, background
//!   priority) a while after the end, again while the record with every announced recording is
//!   not there, [`FETCH_TRIES`] requests at most; the safety re-list catches what is still
//!   missing. How long records take to show depends on the service (15-30 s on RingCentral's,
//!   about a second on a test server), so the first request goes when the last session's record
//!   was found, less a second (a first guess, `record_delay`, before any was found), and after a
//!   miss again 2 s later, three times, then after 4 s, 8 s, ... up to 2 min ([`fetch_waits`]).
//!   A mount thus learns the service's delay on its first call and then spends one or two
//!   requests per call, finding each record within about 2 s of its showing. Records found are added exactly as a by-session lookup adds them (to the index
//!   and the call index, no span marked listed: one record says nothing of the rest of its
//!   date), and the kernel is told that the date directory changed ([`Changes`]).
//! - **While the feed is live**, dates that may still change are listed again after
//!   `live_relist` (a slow safety re-list, also run by [`Fs::follow`] on a timer for the recent
//!   dates already listed), not after `recent_ttl`. `Down` goes back to `recent_ttl`;
//!   `Live { gap: true }` lists the recent dates already listed once (what the gap hid shows;
//!   dates nobody looked at stay unlisted); `Unavailable` is the behaviour without events.
//!   Both re-lists run in the background ([`Fs::refresh_date`]): a reader of a date being
//!   listed again gets what was listed before at once, and the new listing once its page is in
//!   (a re-list waiting for its turn under the rate limit would otherwise hold every `ls`).
//! - **Announced ids wait**: `by-session/<id>` and `by-recording/<id>.ext` of a session the
//!   feed announced (in progress, or ended and not given up) wait up to `live_wait` for the
//!   fetch above, spending no request of their own, and are never put in the negative cache.
//!   `live_wait` is longer than `read_timeout` on purpose: the call may still be going on.
//! - **Readable**: every recording that becomes readable after the mount started (found by the
//!   fetch above, or by a re-list of a recent date after that date's first listing in this
//!   mount) is announced once on [`Fs::readable`].

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;
use tokio::sync::{broadcast, mpsc};

use crate::media::{Known, MediaError, RecordingKey};
use tokio::time::Instant;

use super::node::Node;
use super::{Fs, FsError, State};
use crate::api::Priority;
use crate::catalog;
use crate::model::{CallRecord, LiveNotice, SessionEvent};

/// Most sessions remembered from events; the oldest announced is forgotten first.
pub const SESSIONS_CAP: usize = 10_000;
/// Most recording ids remembered as already announced readable.
const REPORTED_CAP: usize = 100_000;
/// Most `find_session` requests for one ended session.
pub const FETCH_TRIES: u32 = 9;
/// The longest wait between two requests for one ended session.
const RETRY_MAX: Duration = Duration::from_secs(120);

/// The waits between the requests for one ended session's record: 2 s three times (a record
/// shows within seconds of when the last one did), then 4 s, 8 s, ... up to 2 min.
pub fn fetch_waits() -> impl Iterator<Item = Duration> {
    let doubling = std::iter::successors(Some(Duration::from_secs(4)), |d| {
        Some((*d * 2).min(RETRY_MAX))
    });
    std::iter::repeat_n(Duration::from_secs(2), 3)
        .chain(doubling)
        .take(FETCH_TRIES as usize - 1)
}
/// How many readable announcements wait for a slow subscriber before it misses some.
pub(super) const READABLE_BACKLOG: usize = 1024;

/// Where the kernel's caches must be told of a change. The core owns the trait so it names no
/// FUSE type; the adapter implements it over the kernel's notifications. Calls may come from
/// inside an operation on the directory concerned: an implementation must not block on the
/// kernel there (queue the notification; see `crate::fuse`).
pub trait Changes: Send + Sync {
    /// The entries of directory `ino` changed (new sessions in a date directory).
    fn dir_changed(&self, ino: u64);
    /// `name` now exists in directory `parent` (drops a negative entry the kernel may hold).
    fn entry_added(&self, parent: u64, name: &OsStr);
}

/// The state of the event feed, as the mount last heard it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum Feed {
    /// No feed (never started, or it ended): listing as without events.
    #[default]
    Off,
    /// Events flow: recent dates are re-listed only every `live_relist`.
    Live,
    /// The connection is being recovered: listing as without events meanwhile.
    Down,
    /// Events are not available to this app or user (why): listing as without events.
    Unavailable(String),
}

/// A recording that became readable: its path relative to the mount root (under its date
/// directory) and its call-log record as the API returned it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Readable {
    pub path: String,
    pub record: serde_json::Value,
}

/// Counters of the event feed's work, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LiveCounters {
    /// Session events received.
    pub events: u64,
    /// Sessions remembered now (at most [`SESSIONS_CAP`]).
    pub sessions: u64,
    /// `find_session` requests sent for ended sessions.
    pub fetches: u64,
    /// Sessions whose record was found that way.
    pub found: u64,
    /// Sessions given up after [`FETCH_TRIES`] (left to the safety re-list).
    pub gave_up: u64,
    /// Catch-up and safety re-lists started.
    pub relists: u64,
    /// Recordings announced readable.
    pub readable: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetch {
    /// Not ended, or no recording yet.
    Idle,
    Running,
    Done,
    GaveUp,
}

/// What the events said of one session.
#[derive(Debug)]
struct Announced {
    recordings: Vec<String>,
    ended: bool,
    /// When an event first said the call ended.
    ended_at: Option<Instant>,
    last_sequence: Option<u64>,
    fetch: Fetch,
}

/// The feed's part of the core's state (in [`State`], under its lock).
#[derive(Debug, Default)]
pub(super) struct LiveState {
    pub(super) feed: Feed,
    sessions: HashMap<String, Announced>,
    /// Announcement order, for forgetting the oldest.
    order: VecDeque<String>,
    /// Recording id -> session id, for the sessions remembered.
    by_recording: HashMap<String, String>,
    /// Recordings announced readable (bounded, oldest forgotten first).
    reported: HashSet<String>,
    reported_order: VecDeque<String>,
    /// Dates listed completely at least once by this mount: new recordings a later listing of
    /// them finds are readable news; the first listing's are history.
    pub(super) seen_dates: HashSet<Date>,
    /// A catch-up or safety re-list is running.
    relisting: bool,
    /// The dates that re-list is listing again: until each is done, a reader is served what
    /// was listed before instead of waiting for the request (see `Fs::refresh_date`).
    pub(super) refreshing: BTreeSet<Date>,
    /// How long after its end the last ended session's record was found.
    record_after: Option<Duration>,
    /// A fetch is learning `record_after` (see `fetch_ended`).
    probing: bool,
    pub(super) counters: LiveCounters,
}

impl LiveState {
    /// Takes in one event; returns whether a fetch should start now.
    fn merge(&mut self, ev: &SessionEvent) -> bool {
        self.counters.events += 1;
        let id = ev.session_id.to_string();
        if !self.sessions.contains_key(&id) {
            while self.sessions.len() >= SESSIONS_CAP {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                if let Some(a) = self.sessions.remove(&old) {
                    for r in a.recordings {
                        self.by_recording.remove(&r);
                    }
                }
            }
            self.order.push_back(id.clone());
            self.sessions.insert(
                id.clone(),
                Announced {
                    recordings: Vec::new(),
                    ended: false,
                    ended_at: None,
                    last_sequence: None,
                    fetch: Fetch::Idle,
                },
            );
        }
        let a = self.sessions.get_mut(&id).expect("inserted above");
        if let Some(seq) = ev.sequence {
            if a.last_sequence.is_some_and(|last| seq <= last) {
                tracing::trace!("session {id}: event {seq} arrived late or twice");
            }
            a.last_sequence = Some(a.last_sequence.map_or(seq, |last| last.max(seq)));
        }
        let mut named_new = false;
        for r in ev.recording_ids() {
            let r = r.to_string();
            if !a.recordings.contains(&r) {
                self.by_recording.insert(r.clone(), id.clone());
                a.recordings.push(r);
                named_new = true;
            }
        }
        if ev.ended() && !a.ended {
            a.ended = true;
            a.ended_at = Some(Instant::now());
        }
        // A fetch that finished before an event named another recording of the session is
        // started again for it.
        let finished = matches!(a.fetch, Fetch::Done | Fetch::GaveUp);
        let start = a.ended
            && !a.recordings.is_empty()
            && (a.fetch == Fetch::Idle || (finished && named_new));
        if start {
            a.fetch = Fetch::Running;
        }
        self.counters.sessions = self.sessions.len() as u64;
        start
    }

    /// Whether the events announced `recording` and its call is going on or ended less than
    /// `within` ago: a 404 for it means "still being processed", not "gone".
    fn media_may_come(&self, recording: &str, within: Duration) -> bool {
        let Some(a) = self
            .by_recording
            .get(recording)
            .and_then(|s| self.sessions.get(s))
        else {
            return false;
        };
        a.ended_at.is_none_or(|at| at.elapsed() < within)
    }

    /// Marks `id` announced readable; false if it was already.
    fn report(&mut self, id: &str) -> bool {
        if self.reported.contains(id) {
            return false;
        }
        if self.reported.len() >= REPORTED_CAP
            && let Some(old) = self.reported_order.pop_front()
        {
            self.reported.remove(&old);
        }
        self.reported.insert(id.to_string());
        self.reported_order.push_back(id.to_string());
        self.counters.readable += 1;
        true
    }
}

/// What an announced lookup waits for.
pub(super) enum Awaited<'a> {
    Session(&'a str),
    Recording(&'a str),
}

impl Fs {
    /// Where kernel invalidations go (the FUSE adapter's, once mounted). Set once; later calls
    /// are ignored.
    pub fn set_changes(&self, changes: Arc<dyn Changes>) {
        let _ = self.changes.set(changes);
    }

    /// A subscription to the recordings that become readable from now on (see the module docs
    /// of `live`). A subscriber that falls 1024 announcements behind misses the oldest.
    pub fn readable(&self) -> broadcast::Receiver<Readable> {
        self.readable.subscribe()
    }

    /// The state of the event feed.
    pub fn feed(&self) -> Feed {
        self.state().live.feed.clone()
    }

    /// The event feed's counters.
    pub fn live_counters(&self) -> LiveCounters {
        self.state().live.counters.clone()
    }

    /// Follows the event feed: every notice `rx` gives goes to [`Fs::on_notice`], and while the
    /// feed is live the recent dates already listed are listed again every `live_relist` (the
    /// safety re-list). Ends when `rx` closes; the feed is then `Off` (listing as without
    /// events).
    pub fn follow(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<LiveNotice>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let period = self.config.live_relist;
            let mut tick = tokio::time::interval_at(Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    notice = rx.recv() => match notice {
                        Some(n) => self.on_notice(n),
                        None => break,
                    },
                    _ = tick.tick() => {
                        if self.state().live.feed == Feed::Live {
                            self.relist_recent(Some(period));
                        }
                    }
                }
            }
            // A feed that ended because events are not available keeps saying why.
            let mut st = self.state();
            if !matches!(st.live.feed, Feed::Unavailable(_)) {
                st.live.feed = Feed::Off;
            }
        })
    }

    /// Takes in one notice of the event feed (see the module docs). Work that waits (a fetch,
    /// a catch-up listing) is spawned on the current tokio runtime: call it within one.
    pub fn on_notice(self: &Arc<Self>, notice: LiveNotice) {
        match notice {
            LiveNotice::Live { gap } => {
                let was = std::mem::replace(&mut self.state().live.feed, Feed::Live);
                if was != Feed::Live {
                    tracing::info!(
                        "live events: recent dates are listed again every {:?}",
                        self.config.live_relist
                    );
                }
                if gap {
                    self.relist_recent(None);
                }
            }
            LiveNotice::Down => {
                let was = std::mem::replace(&mut self.state().live.feed, Feed::Down);
                if was == Feed::Live {
                    tracing::info!(
                        "live events interrupted: recent dates are listed again every {:?}",
                        self.config.recent_ttl
                    );
                }
            }
            LiveNotice::Unavailable(why) => {
                tracing::info!("no live events ({why}): listing as without them");
                self.state().live.feed = Feed::Unavailable(why);
            }
            LiveNotice::Event(ev) => {
                if self.state().live.merge(&ev) {
                    let fs = self.clone();
                    let id = ev.session_id.to_string();
                    tokio::spawn(async move { fs.fetch_ended(id).await });
                }
            }
        }
    }

    /// The time-to-live of a listing of a date that may still change.
    pub(super) fn recent_listing_ttl(&self, st: &State) -> Duration {
        if st.live.feed == Feed::Live {
            self.config.live_relist
        } else {
            self.config.recent_ttl
        }
    }

    /// Lists again the recent dates already listed (those listed at least `older_than` ago,
    /// when given), in the background: newest first, so one query usually covers them all.
    fn relist_recent(self: &Arc<Self>, older_than: Option<Duration>) {
        let now = Timestamp::now();
        let dates = {
            let mut st = self.state();
            if st.live.relisting {
                return;
            }
            let mut dates: Vec<Date> = st
                .index
                .listed
                .iter()
                .filter(|(d, at)| {
                    self.is_recent(**d, now) && older_than.is_none_or(|o| at.elapsed() >= o)
                })
                .map(|(d, _)| *d)
                .collect();
            if dates.is_empty() {
                return;
            }
            dates.sort_by(|a, b| b.cmp(a));
            for d in &dates {
                st.index.listed.remove(d);
            }
            st.live.refreshing.extend(dates.iter().copied());
            st.live.relisting = true;
            st.live.counters.relists += 1;
            dates
        };
        /// Ends the re-list however its task ends (done, panicked, dropped with the runtime):
        /// a `refreshing` left behind would serve those dates unrefreshed for good.
        struct Done(Arc<Fs>);
        impl Drop for Done {
            fn drop(&mut self) {
                let mut st = self.0.state();
                st.live.refreshing.clear();
                st.live.relisting = false;
            }
        }
        let done = Done(self.clone());
        tokio::spawn(async move {
            for d in dates {
                if let Err(e) = done.0.refresh_date(d).await {
                    tracing::debug!("re-listing {d}: {e}");
                }
            }
            drop(done);
        });
    }

    /// Fetches the record of ended session `id` (see the module docs).
    async fn fetch_ended(&self, id: String) {
        let ended = Instant::now();
        // Until a record has been found, one session at a time learns the delay (the fast
        // schedule from `record_delay`); the others wait for what it learns instead of each
        // probing, which on a busy line would spend the whole Heavy budget on misses.
        let mut progress = self.pages.subscribe();
        let mut prober = false;
        let first = loop {
            {
                let mut st = self.state();
                if let Some(d) = st.live.record_after {
                    break d
                        .saturating_sub(Duration::from_secs(1))
                        .max(Duration::from_secs(1));
                }
                if !st.live.probing {
                    st.live.probing = true;
                    prober = true;
                    break self.config.record_delay;
                }
            }
            if progress.changed().await.is_err() {
                return;
            }
        };
        tokio::time::sleep_until(ended + first).await;
        let mut waits = fetch_waits();
        let mut outcome = Fetch::GaveUp;
        for attempt in 1..=FETCH_TRIES {
            if attempt > 1 {
                tokio::time::sleep(waits.next().unwrap_or(RETRY_MAX)).await;
            }
            if self.api_down() {
                continue;
            }
            let wanted = {
                let st = self.state();
                match st.live.sessions.get(&id) {
                    Some(a) => a.recordings.clone(),
                    None => return, // forgotten: the safety re-list will find it
                }
            };
            match self.find_once(&id).await {
                Ok(records) => {
                    let complete = wanted.iter().all(|w| {
                        records
                            .iter()
                            .any(|r| r.recordings.iter().any(|x| x.id == w.as_str()))
                    });
                    if !records.is_empty() {
                        self.take_live(records);
                    }
                    if complete {
                        outcome = Fetch::Done;
                        // What the next session's first request goes by.
                        self.state().live.record_after = Some(ended.elapsed());
                        break;
                    }
                }
                Err(e) => tracing::debug!("session {id}: {e}"),
            }
        }
        {
            let mut st = self.state();
            if let Some(a) = st.live.sessions.get_mut(&id) {
                a.fetch = outcome;
            }
            match outcome {
                Fetch::Done => st.live.counters.found += 1,
                _ => {
                    st.live.counters.gave_up += 1;
                    tracing::info!(
                        "session {id}: no call-log record after {FETCH_TRIES} tries; the next \
                         re-list of its date will show it"
                    );
                }
            }
        }
        if prober {
            self.state().live.probing = false;
        }
        // Wakes the lookups waiting for this session (see `wait_announced`), and the fetches
        // waiting for the prober.
        self.pages.send_modify(|n| *n += 1);
    }

    /// One `find_session` for an ended session, at background priority.
    async fn find_once(&self, id: &str) -> Result<Vec<CallRecord>, FsError> {
        let scope = self.scope().await?;
        let since = Timestamp::now()
            .checked_sub(jiff::SignedDuration::try_from(self.config.retention).unwrap_or_default())
            .unwrap_or(Timestamp::MIN);
        self.state().live.counters.fetches += 1;
        let result = self
            .log
            .find_session(scope, id, since, Priority::Background)
            .await;
        self.pages.send_modify(|n| *n += 1);
        match result {
            Ok(records) => Ok(records.into_iter().filter(|r| r.session_id == id).collect()),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) if self.switch_scope_on(scope, &e) => {
                Err(FsError::api(format!("session {id}"), e))
            }
            Err(e) => Err(self.api_error(format!("fetching ended session {id}"), e)),
        }
    }

    /// Adds records an event led to, announces their recordings readable and tells the kernel.
    fn take_live(&self, records: Vec<CallRecord>) {
        let ids: Vec<String> = records
            .iter()
            .flat_map(|r| r.recordings.iter().map(|x| x.id.to_string()))
            .collect();
        self.keep_records(records);
        let (readable, changed) = {
            let mut st = self.state();
            self.announce(&mut st, &ids)
        };
        self.publish(readable, changed);
    }

    /// Marks the recordings `ids` (already in the index) announced; returns the announcements
    /// of those not announced before, and the (date directory inode, session directory name)
    /// pairs they changed.
    pub(super) fn announce(
        &self,
        st: &mut State,
        ids: &[String],
    ) -> (Vec<Readable>, Vec<(u64, String)>) {
        let tz = self.config.window.tz.clone();
        let mut out = Vec::new();
        let mut changed = Vec::new();
        for id in ids {
            let Some(session) = st
                .index
                .recordings
                .get(id)
                .and_then(|r| r.session_id.clone())
            else {
                continue;
            };
            let Some(s) = st.index.sessions.get(&session) else {
                continue;
            };
            if !st.live.report(id) {
                continue;
            }
            let record = s
                .records
                .iter()
                .find(|r| r.recordings.iter().any(|x| x.id == id.as_str()))
                .unwrap_or(s.first());
            let date = self.config.window.date_of(s.first().start_time);
            let dir = catalog::session_dir_name(s.first(), &tz);
            let file = catalog::recording_file_name(record, id, self.kind_of(st, id), &tz);
            out.push(Readable {
                path: format!("{}/{dir}/{file}", catalog::date_dir_name(date)),
                record: record.raw.value(),
            });
            let ino = st.inodes.ino(Node::Date(date));
            if !changed.contains(&(ino, dir.clone())) {
                changed.push((ino, dir));
            }
        }
        (out, changed)
    }

    /// Sends announcements and kernel invalidations (never with the state locked).
    pub(super) fn publish(&self, readable: Vec<Readable>, changed: Vec<(u64, String)>) {
        for r in readable {
            // No subscriber is not an error.
            let _ = self.readable.send(r);
        }
        if let Some(changes) = self.changes.get() {
            for (ino, name) in changed {
                changes.entry_added(ino, OsStr::new(&name));
                changes.dir_changed(ino);
            }
        }
    }

    /// For a lookup of an id the event feed announced: waits up to `live_wait` for its record
    /// (see the module docs). `None`: not announced, look it up as usual.
    pub(super) async fn wait_announced(&self, what: Awaited<'_>) -> Option<Result<(), FsError>> {
        let mut progress = self.pages.subscribe();
        let deadline = Instant::now() + self.config.live_wait;
        loop {
            {
                let st = self.state();
                let session = match what {
                    Awaited::Session(id) => id,
                    Awaited::Recording(id) => st.live.by_recording.get(id)?.as_str(),
                };
                let a = st.live.sessions.get(session)?;
                let there = match what {
                    Awaited::Session(id) => st
                        .index
                        .sessions
                        .get(id)
                        .is_some_and(|s| !s.recordings().is_empty()),
                    Awaited::Recording(id) => st.index.recordings.contains_key(id),
                };
                if there {
                    return Some(Ok(()));
                }
                // Given up: looked up as any id (its record may show later; the lookup has
                // its own negative cache).
                if a.fetch == Fetch::GaveUp {
                    return None;
                }
                // Ended with no recording (nothing will be fetched), or fetched without this
                // one: nothing to wait for; looked up as any id.
                if (a.ended && a.recordings.is_empty()) || a.fetch == Fetch::Done {
                    return None;
                }
            }
            tokio::select! {
                _ = progress.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Some(Err(FsError::NotFound)),
            }
        }
    }

    /// Opens a recording's media. A recording the event feed announced is one whose call has
    /// just ended, so "not there" means "still being processed": the open waits for it, up to
    /// `live_wait`, instead of failing with EAGAIN. The waiting costs a request only each time
    /// the media layer's cool-down after a 404 has passed (1 s, doubling), so a script that
    /// opens a recording the moment it is listed gets its bytes for a few requests at most.
    pub(super) async fn open_media(&self, key: &RecordingKey) -> Result<Known, MediaError> {
        let deadline = Instant::now() + self.config.live_wait;
        loop {
            let got = self.media.open(key, Priority::Interactive).await;
            let waits = self
                .state()
                .live
                .media_may_come(key.id.as_str(), self.config.live_wait);
            match got {
                Err(MediaError::NotAvailable(_)) if waits && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => return other,
            }
        }
    }

    /// Before a listing page's records go into the index: the recordings that are new to it.
    pub(super) fn new_recordings(st: &State, records: &[CallRecord]) -> Vec<String> {
        records
            .iter()
            .flat_map(|r| r.recordings.iter())
            .filter(|x| !st.index.recordings.contains_key(x.id.as_str()))
            .map(|x| x.id.to_string())
            .collect()
    }

    /// After a listing page: announces the recordings `fresh` found on dates this mount had
    /// listed before (a first listing's records are history), then notes the dates `marked`
    /// as listed by this mount.
    pub(super) fn after_listing(
        &self,
        st: &mut State,
        fresh: Vec<String>,
        marked: &[Date],
    ) -> (Vec<Readable>, Vec<(u64, String)>) {
        let w = &self.config.window;
        let news: Vec<String> = fresh
            .into_iter()
            .filter(|id| {
                st.index
                    .recordings
                    .get(id)
                    .and_then(|r| r.session_id.as_deref())
                    .and_then(|s| st.index.date_of_session(s, w))
                    .is_some_and(|d| st.live.seen_dates.contains(&d))
            })
            .collect();
        st.live.seen_dates.extend(marked.iter().copied());
        self.announce(st, &news)
    }
}
