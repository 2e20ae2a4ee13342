//! The filesystem core: `lookup`, `getattr`, `opendir`, `open`, `read` as async methods that
//! return plain `Result<_, FsError>`. The FUSE adapter ([`crate::fuse`]) only translates; every
//! decision lives here, so it is tested against the emulator without a kernel.
//!
//! # The tree
//! ```text
//! /                       dates of the window (newest first in readdir order), by-session, by-recording
//! /YYYY-MM-DD/            one directory per call session that has a recording
//! /YYYY-MM-DD/<session>/  its recordings (`... <recordingId>.mp3|wav`) and call.json
//! /by-session/<id>/       any session id, resolved on lookup through the call log
//! /by-recording/<id>.ext  any recording id: the media URL built from the id, then the recording
//!                         metadata endpoint as the fallback on 404
//! ```
//!
//! # What listing costs
//! The root and the by-* directories are local. Listing a date asks the call log once for a span
//! of dates that ends with that date and reaches back over every neighbouring date not yet
//! listed, so the date is on the first page (one request when it has fewer than 1000 recordings)
//! and older dates come along for free. Pages not read yet are kept as a [`index::Cursor`]: the
//! next older date continues that query with `navigation.nextPage` instead of starting over. Root
//! entries are returned newest first, so `find`, `cp -r` and `rsync` walk the dates in the order
//! the call log pages them: a full walk costs about ceil(N/1000) requests. Once the density of
//! calls is known, a span also reaches forward over newer unlisted dates while it is expected to
//! stay under half a page, so walks in the other order (`ls -R` sorts by name) stay cheap too.
//!
//! Dates whose calls may still appear (today, and any date that ended less than `settle` ago)
//! are listed again after `recent_ttl`; older dates never change and are kept.

mod index;
mod plan;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use jiff::Timestamp;
use jiff::civil::Date;

use crate::api::{ApiError, Priority, Scope};
use crate::catalog::{self, AudioKind, Window};
use crate::media::{BoxFuture, Known, Media, MediaError, RecordingKey};
use crate::model::{CallRecord, RecordingMeta};

pub use index::{Index, KnownRecording, Session};
use plan::PagePlan;

/// One page of the call log.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub records: Vec<CallRecord>,
    /// `navigation.nextPage.uri`, absent on the last page.
    pub next: Option<String>,
}

/// What the filesystem needs from the call log. Implemented by [`crate::api::Client`]; a trait so
/// the core can be driven by a scripted source in tests.
pub trait CallLog: Send + Sync + 'static {
    /// One page of recorded calls in `[from, to)`; `next` continues a previous query.
    fn page(
        &self,
        scope: Scope,
        from: Timestamp,
        to: Timestamp,
        next: Option<String>,
        prio: Priority,
    ) -> BoxFuture<'_, Result<Page, ApiError>>;
    /// The records of one session (`sessionId`, with `dateFrom` reaching back to `since`).
    fn find_session<'a>(
        &'a self,
        scope: Scope,
        session_id: &'a str,
        since: Timestamp,
        prio: Priority,
    ) -> BoxFuture<'a, Result<Vec<CallRecord>, ApiError>>;
    /// Recording metadata (official `contentUri` and content type).
    fn recording_meta<'a>(&'a self, id: &'a str, prio: Priority) -> BoxFuture<'a, Result<RecordingMeta, ApiError>>;
    /// The media URL built from a recording id (the seed's approach 2), when a media host is known.
    fn recording_content_url(&self, id: &str) -> Option<String>;
}

/// Which call log to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeChoice {
    /// The account's when the user may read it, the extension's otherwise (decided by the first
    /// listing: a 403 on the account call log switches to the extension's).
    Auto,
    Fixed(Scope),
}

/// Settings of the filesystem core.
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub window: Window,
    pub scope: ScopeChoice,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits of files and directories (default 0400 / 0500: only the mounting user).
    pub file_mode: u16,
    pub dir_mode: u16,
    /// How long a listing of a date that may still change (today, recent) is reused.
    pub recent_ttl: Duration,
    /// How long after a date ends calls may still appear in it (calls last up to hours and
    /// records appear 15-30 s after the end).
    pub settle: Duration,
    /// Kernel cache lifetime for things that never change (past dates, files of known size).
    pub stable_ttl: Duration,
    /// How long an unknown by-session / by-recording id is remembered as absent.
    pub negative_ttl: Duration,
    /// How far back `by-session/<id>` searches (RingCentral keeps recordings 90 days).
    pub retention: Duration,
    /// The format assumed for names until the account's real format is seen.
    pub assumed_format: AudioKind,
    /// The longest an operation waits for the API (listing a date, resolving a by-session or
    /// by-recording id) before it fails with EIO; reads use the media layer's equal setting.
    pub read_timeout: Duration,
}

impl FsConfig {
    pub fn new(window: Window) -> FsConfig {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        FsConfig {
            window,
            scope: ScopeChoice::Auto,
            uid,
            gid,
            file_mode: 0o400,
            dir_mode: 0o500,
            recent_ttl: Duration::from_secs(30),
            settle: Duration::from_secs(2 * 3600),
            stable_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(60),
            retention: Duration::from_secs(90 * 86400),
            assumed_format: AudioKind::Mp3,
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// Errors of the filesystem core, each mapped to one errno by [`FsError::to_errno`].
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only file system")]
    ReadOnly,
    #[error("recording {0} is not available yet")]
    NotYet(String),
    #[error("{0}")]
    Api(String),
    #[error("{0}")]
    Media(String),
    #[error("timed out waiting for the API")]
    TimedOut,
    #[error("bad file handle")]
    BadHandle,
}

impl FsError {
    pub fn to_errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::NotYet(_) => libc::EAGAIN,
            FsError::Api(_) | FsError::Media(_) | FsError::TimedOut => libc::EIO,
            FsError::BadHandle => libc::EBADF,
        }
    }
}

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Attributes of a node, independent of fuser's types.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    /// How long the kernel may keep these attributes: zero while a size is only an estimate, so
    /// reads past the estimate ask again once the real size is known.
    pub attr_ttl: Duration,
    /// How long the kernel may keep the name -> inode mapping.
    pub entry_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: String,
}

/// What `open` tells the kernel.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    /// The content never changes: keep the page cache across opens.
    pub keep_cache: bool,
    /// The size is unknown (no `Content-Length`): bypass the page cache so reads are not cut at
    /// an estimated size.
    pub direct_io: bool,
}

/// Where a node hangs in the tree. Inode numbers are handed out per node on first sight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    Root,
    Date(Date),
    /// A session directory, in a date (`by_session == false`) or under by-session.
    SessionDir { session: String, by_session: bool },
    CallJson { session: String, by_session: bool },
    /// A recording file in a session directory.
    RecFile { id: String, by_session: bool },
    BySession,
    ByRecording,
    /// `by-recording/<id>.<ext>`.
    ByRecFile(String),
}

#[allow(dead_code)]
const ROOT_INO: u64 = 1;
const BY_SESSION: &str = "by-session";
const BY_RECORDING: &str = "by-recording";
const CALL_JSON: &str = "call.json";

#[derive(Default)]
struct Inodes {
    by_node: HashMap<Node, u64>,
    nodes: Vec<Node>,
}

impl Inodes {
    fn new() -> Inodes {
        let mut t = Inodes::default();
        t.ino(Node::Root);
        t
    }
    fn ino(&mut self, node: Node) -> u64 {
        if let Some(&ino) = self.by_node.get(&node) {
            return ino;
        }
        self.nodes.push(node.clone());
        let ino = self.nodes.len() as u64; // the root is 1
        self.by_node.insert(node, ino);
        ino
    }
    fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(usize::try_from(ino).ok()?.checked_sub(1)?)
    }
}

struct State {
    inodes: Inodes,
    index: Index,
    /// The audio format this account records in, once one content response told it.
    account_kind: Option<AudioKind>,
    /// Per recording, the format its own content response told.
    kinds: HashMap<String, AudioKind>,
    /// The scope in use, once decided.
    scope: Option<Scope>,
    /// Calls per second of the window, learned from the first listing (for forward spans).
    density: Option<f64>,
    /// Ids looked up in by-session / by-recording and not found, with when.
    negative: HashMap<String, Instant>,
    /// Open recording handles: fh -> recording key.
    handles: HashMap<u64, RecordingKey>,
}

/// The filesystem core. Cheap to share (`Arc<Fs>`); every method takes `&self`.
///
/// Lock order: `listing` (async, held across the call-log requests of one listing) before
/// `state` (sync, never held across an await).
pub struct Fs {
    log: Arc<dyn CallLog>,
    media: Arc<Media>,
    config: FsConfig,
    state: Mutex<State>,
    /// Serializes listings so that two dates listed at once share one query instead of racing.
    listing: tokio::sync::Mutex<()>,
    /// Counts call-log pages received: the progress a waiting listing watches (see `ensure_date`).
    pages: tokio::sync::watch::Sender<u64>,
    next_fh: AtomicU64,
    mounted_at: SystemTime,
}

/// Largest number of ids kept in the negative cache before it is cleared.
const NEGATIVE_CAP: usize = 10_000;

impl Fs {
    pub fn new(log: Arc<dyn CallLog>, media: Arc<Media>, config: FsConfig) -> Fs {
        let scope = match config.scope {
            ScopeChoice::Fixed(s) => Some(s),
            ScopeChoice::Auto => None,
        };
        Fs {
            log,
            media,
            state: Mutex::new(State {
                inodes: Inodes::new(),
                index: Index::default(),
                account_kind: None,
                kinds: HashMap::new(),
                scope,
                density: None,
                negative: HashMap::new(),
                handles: HashMap::new(),
            }),
            config,
            listing: tokio::sync::Mutex::new(()),
            pages: tokio::sync::watch::Sender::new(0),
            next_fh: AtomicU64::new(1),
            mounted_at: SystemTime::now(),
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    pub fn media(&self) -> &Arc<Media> {
        &self.media
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---------------------------------------------------------------- attributes

    fn dir_attr(&self, ino: u64, mtime: SystemTime, ttl: Duration) -> Attr {
        Attr {
            ino,
            kind: Kind::Dir,
            size: 0,
            perm: self.config.dir_mode,
            uid: self.config.uid,
            gid: self.config.gid,
            mtime,
            attr_ttl: ttl,
            entry_ttl: ttl,
        }
    }

    fn file_attr(&self, ino: u64, size: u64, mtime: SystemTime, exact: bool) -> Attr {
        Attr {
            ino,
            kind: Kind::File,
            size,
            perm: self.config.file_mode,
            uid: self.config.uid,
            gid: self.config.gid,
            mtime,
            attr_ttl: if exact { self.config.stable_ttl } else { Duration::ZERO },
            entry_ttl: self.config.stable_ttl,
        }
    }

    fn is_recent(&self, date: Date, now: Timestamp) -> bool {
        let (_, end) = self.config.window.date_range(date);
        let settle = jiff::SignedDuration::try_from(self.config.settle).unwrap_or_default();
        end.checked_add(settle).map(|t| t > now).unwrap_or(true)
    }

    fn date_ttl(&self, date: Date) -> Duration {
        if self.is_recent(date, Timestamp::now()) {
            // Short but never zero: a zero TTL makes the kernel look every entry up again
            // after each readdir.
            Duration::from_secs(1)
        } else {
            self.config.stable_ttl
        }
    }

    fn attr_of(&self, st: &State, ino: u64, node: &Node) -> Result<Attr, FsError> {
        let now = Timestamp::now();
        match node {
            Node::Root => Ok(self.dir_attr(ino, self.mounted_at, Duration::from_secs(1))),
            Node::BySession | Node::ByRecording => {
                Ok(self.dir_attr(ino, self.mounted_at, Duration::from_secs(1)))
            }
            Node::Date(d) => {
                if !self.config.window.contains(*d, now) {
                    return Err(FsError::NotFound);
                }
                let start = self.config.window.date_range(*d).0;
                Ok(self.dir_attr(ino, to_system(start), self.date_ttl(*d)))
            }
            Node::SessionDir { session, .. } => {
                let s = st.index.sessions.get(session).ok_or(FsError::NotFound)?;
                Ok(self.dir_attr(ino, to_system(s.first().start_time), self.config.stable_ttl))
            }
            Node::CallJson { session, .. } => {
                let s = st.index.sessions.get(session).ok_or(FsError::NotFound)?;
                let size = call_json(s).len() as u64;
                Ok(self.file_attr(ino, size, to_system(s.first().start_time), true))
            }
            Node::RecFile { id, .. } | Node::ByRecFile(id) => {
                let rec = st.index.recordings.get(id).ok_or(FsError::NotFound)?;
                let mtime = rec.start.map(to_system).unwrap_or(self.mounted_at);
                let (size, exact) = self.recording_size(st, rec);
                Ok(self.file_attr(ino, size, mtime, exact))
            }
        }
    }

    /// The size of a recording: exact once a response stated it or a body ended at the content's
    /// end, else an estimate from its duration, published with a zero attribute TTL and opened
    /// with direct I/O so that the kernel never cuts or pads reads by it. The bytes received so
    /// far are never published: a lower bound taken for the size truncates the file for good.
    fn recording_size(&self, st: &State, rec: &KnownRecording) -> (u64, bool) {
        if let Some(Known { size: Some(size), .. }) = self.media.known(&rec.id) {
            return (size, true);
        }
        let kind = self.kind_of(st, &rec.id);
        (catalog::estimated_size(kind, rec.duration.unwrap_or(60)), false)
    }

    fn kind_of(&self, st: &State, id: &str) -> AudioKind {
        st.kinds.get(id).copied().or(st.account_kind).unwrap_or(self.config.assumed_format)
    }

    // ---------------------------------------------------------------- names

    fn session_children(&self, st: &mut State, session: &str, by_session: bool) -> Vec<DirEntry> {
        let Some(s) = st.index.sessions.get(session) else { return Vec::new() };
        let tz = &self.config.window.tz;
        let named: Vec<(String, String)> = s
            .recordings()
            .into_iter()
            .map(|rec| {
                let record = s
                    .records
                    .iter()
                    .find(|r| r.recordings.iter().any(|x| x.id == rec.id))
                    .unwrap_or(s.first());
                let kind = self.kind_of(st, rec.id.as_str());
                (rec.id.to_string(), catalog::recording_file_name(record, rec.id.as_str(), kind, tz))
            })
            .collect();
        let mut out: Vec<DirEntry> = named
            .into_iter()
            .map(|(id, name)| DirEntry { ino: st.inodes.ino(Node::RecFile { id, by_session }), kind: Kind::File, name })
            .collect();
        out.push(DirEntry {
            ino: st.inodes.ino(Node::CallJson { session: session.to_string(), by_session }),
            kind: Kind::File,
            name: CALL_JSON.to_string(),
        });
        out
    }

    /// The session whose directory in `date` is called `name`.
    ///
    /// The session id is normally the name's last word: one name to build and compare. A session
    /// id that is not a plain token (a space, a `/` that naming replaced) does not survive as the
    /// last word, so then the date's names are compared one by one. Both paths compare the whole
    /// name, so a name maps to the session listed under it and to nothing else. Building every
    /// name of the date on each lookup instead (as `readdir` does) made `ls -l` of a date with
    /// 10,000 sessions quadratic (minutes); parsing the id alone made the directory of an odd
    /// session id impossible to enter, or another session's (found by tests/faults.rs).
    fn session_named(&self, st: &State, date: Date, name: &str) -> Option<String> {
        let tz = &self.config.window.tz;
        let on_date = st.index.by_date.get(&date)?;
        let matches = |s: &Session| !s.recordings().is_empty() && catalog::session_dir_name(s.first(), tz) == name;
        let last = name.rsplit(' ').next().unwrap_or(name);
        if on_date.contains(last)
            && let Some(s) = st.index.sessions.get(last)
            && matches(s)
        {
            return Some(s.session_id.clone());
        }
        st.index.sessions_on(date).find(|s| matches(s)).map(|s| s.session_id.clone())
    }

    fn date_children(&self, st: &mut State, date: Date) -> Vec<DirEntry> {
        let tz = self.config.window.tz.clone();
        let mut named: Vec<(String, String)> = st
            .index
            .sessions_on(date)
            .filter(|s| !s.recordings().is_empty())
            .map(|s| (catalog::session_dir_name(s.first(), &tz), s.session_id.clone()))
            .collect();
        named.sort();
        named
            .into_iter()
            .map(|(name, session)| DirEntry {
                ino: st.inodes.ino(Node::SessionDir { session, by_session: false }),
                kind: Kind::Dir,
                name,
            })
            .collect()
    }

    // ---------------------------------------------------------------- listing

    fn is_listed(&self, st: &State, date: Date, now: Timestamp) -> bool {
        match st.index.listed.get(&date) {
            None => false,
            Some(at) => !self.is_recent(date, now) || at.elapsed() < self.config.recent_ttl,
        }
    }

    /// Makes sure `date` is listed, spending as few call-log requests as the rules in the module
    /// docs allow.
    async fn ensure_date(&self, date: Date) -> Result<(), FsError> {
        let now = Timestamp::now();
        if self.is_listed(&self.state(), date, now) {
            return Ok(());
        }
        // Dropping the listing midway (see `bounded`) is safe: nothing is recorded until a page
        // has arrived.
        self.bounded(|| format!("listing {date}"), self.list_date(date)).await?
    }

    /// Runs `f`, an operation waiting on the API, and fails with [`FsError::TimedOut`] (EIO)
    /// after `read_timeout` in which no call-log page arrived.
    ///
    /// With a hung API the client's own limits (a stall timeout per attempt, times its retries)
    /// let one `ls` block for minutes, and every other listing queued behind it on the listing
    /// lock (found by tests/faults.rs). But the bound is on *silence*, not on the whole
    /// operation: every page that arrives, for this operation or for the listing ahead of it,
    /// restarts the clock. A date of 20,000 recordings takes two minutes at RingCentral's 10
    /// pages a minute, and must not fail while pages flow.
    async fn bounded<T>(&self, what: impl FnOnce() -> String, f: impl std::future::Future<Output = T>) -> Result<T, FsError> {
        let mut pages = self.pages.subscribe();
        tokio::pin!(f);
        loop {
            tokio::select! {
                done = &mut f => return Ok(done),
                _ = pages.changed() => continue,
                _ = tokio::time::sleep(self.config.read_timeout) => {
                    tracing::warn!("{}: no answer from the API within {:?}", what(), self.config.read_timeout);
                    return Err(FsError::TimedOut);
                }
            }
        }
    }

    async fn list_date(&self, date: Date) -> Result<(), FsError> {
        let _one_listing_at_a_time = self.listing.lock().await;
        loop {
            let now = Timestamp::now();
            let plan = {
                let st = self.state();
                if self.is_listed(&st, date, now) {
                    return Ok(());
                }
                self.plan(&st, date, now)
            };
            self.run_page(plan).await?;
        }
    }

    /// Chooses the next request for listing `date` ([`plan::plan_page`]), with the clocks
    /// applied here: a cursor over dates that may still change is continued only within
    /// `recent_ttl` of its last page, or its next pages would miss calls that appeared since.
    fn plan(&self, st: &State, date: Date, now: Timestamp) -> PagePlan {
        let w = &self.config.window;
        let cursor = st.index.cursor.as_ref().filter(|c| {
            c.created.elapsed() < self.config.recent_ttl || !self.is_recent(w.date_of(c.oldest), now)
        });
        plan::plan_page(date, |d| self.is_listed(st, d, now), w, st.density, cursor, now)
    }

    async fn run_page(&self, plan: PagePlan) -> Result<(), FsError> {
        let scope = self.scope().await?;
        let result = self.log.page(scope, plan.from, plan.to, plan.next.clone(), Priority::Interactive).await;
        let page = match result {
            Ok(page) => page,
            Err(e) if self.config.scope == ScopeChoice::Auto && scope == Scope::Account && e.is_forbidden() => {
                tracing::info!("this user may not read the account call log ({e}); using the extension call log");
                self.state().scope = Some(Scope::Extension);
                return Ok(()); // the caller loops and plans again
            }
            Err(e) => {
                tracing::warn!("listing calls {} .. {} failed: {e}", plan.from, plan.to);
                if plan.next.is_some() {
                    self.state().index.cursor = None;
                }
                return Err(FsError::Api(e.to_string()));
            }
        };
        self.pages.send_modify(|n| *n += 1);
        let mut st = self.state();
        let st = &mut *st;
        let count = page.records.len();
        let oldest = page.records.iter().map(|r| r.start_time).min();
        let w = &self.config.window;
        let at = Instant::now();
        st.index.add_records(page.records, w);
        let first_request = plan.next.is_none();
        match page.next {
            Some(next) => {
                let prev_oldest = st.index.cursor.as_ref().filter(|_| !first_request).map(|c| c.oldest);
                let oldest = oldest.or(prev_oldest).unwrap_or(plan.to);
                st.index.mark_listed(w, plan.from, plan.to, Some(oldest), at);
                if first_request && st.density.is_none() && count > 0 {
                    let secs = plan.to.duration_since(oldest).as_secs_f64().max(60.0);
                    st.density = Some(count as f64 / secs);
                }
                st.index.cursor = Some(index::Cursor { from: plan.from, to: plan.to, next, oldest, created: at });
            }
            None => {
                st.index.mark_listed(w, plan.from, plan.to, None, at);
                if first_request && st.density.is_none() {
                    let secs = plan.to.duration_since(plan.from).as_secs_f64().max(60.0);
                    st.density = Some(count.max(1) as f64 / secs);
                }
                if !first_request {
                    st.index.cursor = None;
                }
            }
        }
        Ok(())
    }

    /// The scope to query, deciding `Auto` as `Account` until a 403 says otherwise.
    async fn scope(&self) -> Result<Scope, FsError> {
        let mut st = self.state();
        Ok(*st.scope.get_or_insert(match self.config.scope {
            ScopeChoice::Fixed(s) => s,
            ScopeChoice::Auto => Scope::Account,
        }))
    }

    // ---------------------------------------------------------------- by-session / by-recording

    fn negative_hit(&self, key: &str) -> bool {
        let mut st = self.state();
        match st.negative.get(key) {
            Some(at) if at.elapsed() < self.config.negative_ttl => true,
            Some(_) => {
                st.negative.remove(key);
                false
            }
            None => false,
        }
    }

    fn remember_absent(&self, key: String) {
        let mut st = self.state();
        if st.negative.len() >= NEGATIVE_CAP {
            st.negative.clear();
        }
        st.negative.insert(key, Instant::now());
    }

    async fn resolve_session(&self, session_id: &str) -> Result<(), FsError> {
        if self.state().index.sessions.get(session_id).is_some_and(|s| !s.recordings().is_empty()) {
            return Ok(());
        }
        let key = format!("s:{session_id}");
        if !catalog::is_plausible_id(session_id) || self.negative_hit(&key) {
            return Err(FsError::NotFound);
        }
        let scope = self.scope().await?;
        let since = Timestamp::now()
            .checked_sub(jiff::SignedDuration::try_from(self.config.retention).unwrap_or_default())
            .unwrap_or(Timestamp::MIN);
        let find = self.log.find_session(scope, session_id, since, Priority::Interactive);
        let records = match self.bounded(|| format!("looking up session {session_id}"), find).await? {
            Ok(r) => r,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) if self.config.scope == ScopeChoice::Auto && scope == Scope::Account && e.is_forbidden() => {
                tracing::info!("this user may not read the account call log ({e}); using the extension call log");
                self.state().scope = Some(Scope::Extension);
                let find = self.log.find_session(Scope::Extension, session_id, since, Priority::Interactive);
                self.bounded(|| format!("looking up session {session_id}"), find)
                    .await?
                    .map_err(|e| FsError::Api(e.to_string()))?
            }
            Err(e) => {
                tracing::warn!("looking up session {session_id} failed: {e}");
                return Err(FsError::Api(e.to_string()));
            }
        };
        let records: Vec<_> = records.into_iter().filter(|r| r.session_id == session_id).collect();
        if records.iter().all(|r| r.recordings.is_empty()) {
            self.remember_absent(key);
            return Err(FsError::NotFound);
        }
        self.state().index.add_records(records, &self.config.window);
        Ok(())
    }

    async fn resolve_recording(&self, id: &str) -> Result<(), FsError> {
        if self.state().index.recordings.contains_key(id) {
            return Ok(());
        }
        let key = format!("r:{id}");
        if !catalog::is_plausible_id(id) || self.negative_hit(&key) {
            return Err(FsError::NotFound);
        }
        // Approach 2: the media URL built from the id. Opening it starts the download that the
        // read will use, so when it works it costs nothing extra.
        if let Some(url) = self.log.recording_content_url(id) {
            let rk = RecordingKey { id: id.to_string(), content_uri: url.clone() };
            match self.media.open(&rk, Priority::Interactive).await {
                Ok(known) => {
                    self.media.close(&rk);
                    self.learn_kind(id, &known);
                    self.add_bare_recording(id, url, None);
                    return Ok(());
                }
                Err(MediaError::NotAvailable(_)) => {}
                Err(e) => return Err(media_error(id, e)),
            }
        }
        // Approach 3's fallback: ask the API where the recording lives.
        let meta = self.log.recording_meta(id, Priority::Interactive);
        match self.bounded(|| format!("looking up recording {id}"), meta).await? {
            Ok(meta) => {
                if let Some(kind) = meta.content_type.as_deref().and_then(AudioKind::from_content_type) {
                    self.state().kinds.insert(id.to_string(), kind);
                }
                self.add_bare_recording(id, meta.content_uri, meta.duration);
                Ok(())
            }
            Err(e) if e.is_not_found() => {
                self.remember_absent(key);
                Err(FsError::NotFound)
            }
            Err(e) => {
                tracing::warn!("looking up recording {id} failed: {e}");
                Err(FsError::Api(e.to_string()))
            }
        }
    }

    fn add_bare_recording(&self, id: &str, content_uri: String, duration: Option<u64>) {
        self.state().index.recordings.entry(id.to_string()).or_insert(KnownRecording {
            id: id.to_string(),
            content_uri,
            session_id: None,
            start: None,
            duration,
        });
    }

    fn learn_kind(&self, id: &str, known: &Known) {
        if let Some(kind) = known.content_type.as_deref().and_then(AudioKind::from_content_type) {
            let mut st = self.state();
            st.kinds.insert(id.to_string(), kind);
            if st.account_kind.is_none() {
                tracing::info!("this account records in {}", kind.extension());
                st.account_kind = Some(kind);
            }
        }
    }

    // ---------------------------------------------------------------- operations

    pub async fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let st = self.state();
        let node = st.inodes.node(ino).cloned().ok_or(FsError::NotFound)?;
        self.attr_of(&st, ino, &node)
    }

    pub async fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, FsError> {
        let name = name.to_str().ok_or(FsError::NotFound)?;
        if catalog::is_probe_name(name) {
            return Err(FsError::NotFound);
        }
        let parent_node = self.state().inodes.node(parent).cloned().ok_or(FsError::NotFound)?;
        let node = match parent_node {
            Node::Root => match name {
                BY_SESSION => Node::BySession,
                BY_RECORDING => Node::ByRecording,
                _ => {
                    let date = catalog::parse_date_dir(name).ok_or(FsError::NotFound)?;
                    if !self.config.window.contains(date, Timestamp::now()) {
                        return Err(FsError::NotFound);
                    }
                    Node::Date(date)
                }
            },
            Node::Date(date) => {
                // `HH-MM-SS dir party <sessionId>`: anything else is refused before it costs
                // a listing.
                if !has_time_prefix(name) {
                    return Err(FsError::NotFound);
                }
                self.ensure_date(date).await?;
                let st = self.state();
                let session = self.session_named(&st, date, name).ok_or(FsError::NotFound)?;
                Node::SessionDir { session, by_session: false }
            }
            Node::BySession => {
                self.resolve_session(name).await?;
                Node::SessionDir { session: name.to_string(), by_session: true }
            }
            Node::SessionDir { session, by_session } => {
                if name == CALL_JSON {
                    Node::CallJson { session, by_session }
                } else {
                    let mut st = self.state();
                    let children = self.session_children(&mut st, &session, by_session);
                    // The exact current name, or the same name with the other audio extension (a
                    // name the kernel may still hold from before the real format was learned).
                    // The node comes from the entry, not from the id at the end of the name: that
                    // is the id as names show it, which need not be the recording's real id.
                    let stem = |n: &str| n.rsplit_once('.').map(|(s, _)| s.to_owned());
                    let is_recording = |n: &str| catalog::split_recording_name(n).is_some();
                    let entry = children.iter().find(|e| e.name == name).or_else(|| {
                        children
                            .iter()
                            .find(|e| is_recording(name) && is_recording(&e.name) && stem(&e.name) == stem(name))
                    });
                    entry.and_then(|e| st.inodes.node(e.ino).cloned()).ok_or(FsError::NotFound)?
                }
            }
            Node::ByRecording => {
                let (id, _) = catalog::split_recording_name(name).ok_or(FsError::NotFound)?;
                if name != catalog::by_recording_name(id, AudioKind::Mp3)
                    && name != catalog::by_recording_name(id, AudioKind::Wav)
                {
                    return Err(FsError::NotFound);
                }
                self.resolve_recording(id).await?;
                Node::ByRecFile(id.to_string())
            }
            Node::CallJson { .. } | Node::RecFile { .. } | Node::ByRecFile(_) => return Err(FsError::NotDir),
        };
        let mut st = self.state();
        let ino = st.inodes.ino(node.clone());
        self.attr_of(&st, ino, &node)
    }

    /// The entries of a directory (without `.` and `..`), computed once per `opendir` so that
    /// readdir paging is consistent.
    pub async fn opendir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let node = self.state().inodes.node(ino).cloned().ok_or(FsError::NotFound)?;
        match node {
            Node::Root => {
                let now = Timestamp::now();
                let mut st = self.state();
                let mut out = Vec::new();
                // Newest first: walkers that follow readdir order then list dates in the order
                // the call log pages them (see the module docs).
                for date in self.config.window.dates(now).into_iter().rev() {
                    out.push(DirEntry {
                        ino: st.inodes.ino(Node::Date(date)),
                        kind: Kind::Dir,
                        name: catalog::date_dir_name(date),
                    });
                }
                out.push(DirEntry { ino: st.inodes.ino(Node::BySession), kind: Kind::Dir, name: BY_SESSION.into() });
                out.push(DirEntry { ino: st.inodes.ino(Node::ByRecording), kind: Kind::Dir, name: BY_RECORDING.into() });
                Ok(out)
            }
            Node::Date(date) => {
                if !self.config.window.contains(date, Timestamp::now()) {
                    return Err(FsError::NotFound);
                }
                self.ensure_date(date).await?;
                let mut st = self.state();
                Ok(self.date_children(&mut st, date))
            }
            Node::SessionDir { session, by_session } => {
                let mut st = self.state();
                if !st.index.sessions.contains_key(&session) {
                    return Err(FsError::NotFound);
                }
                Ok(self.session_children(&mut st, &session, by_session))
            }
            Node::BySession => {
                let mut st = self.state();
                let mut ids: Vec<String> = st
                    .index
                    .sessions
                    .values()
                    .filter(|s| !s.recordings().is_empty())
                    .map(|s| s.session_id.clone())
                    .collect();
                ids.sort();
                Ok(ids
                    .into_iter()
                    .map(|id| DirEntry {
                        ino: st.inodes.ino(Node::SessionDir { session: id.clone(), by_session: true }),
                        kind: Kind::Dir,
                        name: id,
                    })
                    .collect())
            }
            Node::ByRecording => {
                let mut st = self.state();
                let mut ids: Vec<String> = st.index.recordings.keys().cloned().collect();
                ids.sort();
                Ok(ids
                    .into_iter()
                    .map(|id| {
                        let name = catalog::by_recording_name(&id, self.kind_of(&st, &id));
                        DirEntry { ino: st.inodes.ino(Node::ByRecFile(id)), kind: Kind::File, name }
                    })
                    .collect())
            }
            Node::CallJson { .. } | Node::RecFile { .. } | Node::ByRecFile(_) => Err(FsError::NotDir),
        }
    }

    /// Opens a file for reading. A recording's content URI is resolved and its download started
    /// here (waiting for the response headers, about one round trip), so the size and format are
    /// known before the first read.
    pub async fn open(&self, ino: u64, write: bool) -> Result<Opened, FsError> {
        let node = self.state().inodes.node(ino).cloned().ok_or(FsError::NotFound)?;
        if write {
            return Err(FsError::ReadOnly);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        match node {
            Node::CallJson { .. } => Ok(Opened { fh, keep_cache: true, direct_io: false }),
            Node::RecFile { id, .. } | Node::ByRecFile(id) => {
                let (key, start, duration) = {
                    let st = self.state();
                    let rec = st.index.recordings.get(&id).ok_or(FsError::NotFound)?;
                    (RecordingKey { id: id.clone(), content_uri: rec.content_uri.clone() }, rec.start, rec.duration)
                };
                let known = match self.media.open(&key, Priority::Interactive).await {
                    Ok(known) => known,
                    Err(MediaError::NotAvailable(msg)) => {
                        // Listed but not fetchable: the call has just ended and the recording
                        // is still being processed, or it is gone.
                        let ended = start.and_then(|s| s.checked_add(jiff::SignedDuration::from_secs(duration.unwrap_or(0) as i64)).ok());
                        let recent = ended.is_none_or(|e| Timestamp::now().duration_since(e).as_secs() < 3600);
                        return Err(if recent { FsError::NotYet(id) } else { FsError::Media(msg) });
                    }
                    Err(e) => return Err(media_error(&id, e)),
                };
                self.learn_kind(&id, &known);
                self.state().handles.insert(fh, key);
                let direct_io = known.size.is_none();
                Ok(Opened { fh, keep_cache: !direct_io, direct_io })
            }
            Node::Root | Node::Date(_) | Node::SessionDir { .. } | Node::BySession | Node::ByRecording => {
                Err(FsError::IsDir)
            }
        }
    }

    pub async fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let node = self.state().inodes.node(ino).cloned().ok_or(FsError::NotFound)?;
        match node {
            Node::CallJson { session, .. } => {
                let st = self.state();
                let s = st.index.sessions.get(&session).ok_or(FsError::NotFound)?;
                let json = call_json(s);
                let start = (offset as usize).min(json.len());
                let end = start.saturating_add(size as usize).min(json.len());
                Ok(Bytes::copy_from_slice(&json[start..end]))
            }
            Node::RecFile { id, .. } | Node::ByRecFile(id) => {
                let key = self.state().handles.get(&fh).cloned().ok_or(FsError::BadHandle)?;
                self.media.read(&key, offset, size, Priority::Interactive).await.map_err(|e| media_error(&id, e))
            }
            _ => Err(FsError::IsDir),
        }
    }

    pub fn release(&self, fh: u64) {
        let key = self.state().handles.remove(&fh);
        if let Some(key) = key {
            self.media.close(&key);
        }
    }
}

/// `HH-MM-SS ...`, how every session directory's name starts.
fn has_time_prefix(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() > 9
        && b[8] == b' '
        && b[..8].iter().enumerate().all(|(i, c)| if i % 3 == 2 { *c == b'-' } else { c.is_ascii_digit() })
}

fn media_error(id: &str, e: MediaError) -> FsError {
    match e {
        MediaError::TimedOut => {
            tracing::warn!("recording {id}: timed out waiting for the media host");
            FsError::TimedOut
        }
        MediaError::NotAvailable(m) => FsError::NotYet(format!("{id}: {m}")),
        // The media layer logged the cause once, when the download failed.
        MediaError::Failed(m) | MediaError::Transient(m) => FsError::Media(format!("recording {id}: {m}")),
    }
}

/// `call.json`: the session's record as the API returned it (an array when the session has
/// several records), pretty-printed.
pub fn call_json(s: &Session) -> Vec<u8> {
    let value = if s.records.len() == 1 {
        s.records[0].raw.clone()
    } else {
        serde_json::Value::Array(s.records.iter().map(|r| r.raw.clone()).collect())
    };
    let mut out = serde_json::to_vec_pretty(&value).unwrap_or_default();
    out.push(b'\n');
    out
}

fn to_system(t: Timestamp) -> SystemTime {
    SystemTime::try_from(t).unwrap_or(SystemTime::UNIX_EPOCH)
}
