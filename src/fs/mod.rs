//! The filesystem core: `lookup`, `getattr`, `opendir`, `open`, `read` as async methods that
//! return plain `Result<_, FsError>`. The FUSE adapter ([`crate::fuse`]) only translates; every
//! decision lives here, so it is tested against the emulator without a kernel.
//!
//! # The tree
//! ```text
//! /                       dates of the window (newest first in readdir order), by-session, by-recording
//! /YYYY-MM-DD/            one directory per call session that has a recording, and calls.csv
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
//! and older dates come along for free. Pages not read yet are kept as a cursor (`index::Cursor`): the
//! next older date continues that query with `navigation.nextPage` instead of starting over. Root
//! entries are returned newest first, so `find`, `cp -r` and `rsync` walk the dates in the order
//! the call log pages them: a full walk costs about ceil(N/1000) requests. Once the density of
//! calls is known (summed over every page listed, `plan::Density`), a span also reaches
//! forward over newer unlisted dates while it is expected to stay under half a page, so walks in
//! the other order (`ls -R` sorts by name) stay cheap too: at most one query per date.
//!
//! Dates whose calls may still appear (today, and any date that ended less than `settle` ago)
//! are listed again after `recent_ttl`; older dates never change and are kept, also across
//! mounts when a call index is given ([`Fs::with_index`], `persist`). With a call index, only
//! the records of the dates in use stay in memory ([`DATES_IN_MEMORY`]); the others are read
//! from it again when needed.
//!
//! With a live event feed (`live`, [`Fs::follow`]) those dates are listed again only every
//! `live_relist`; the records of calls that end are fetched one session at a time instead, and
//! what becomes readable is announced on [`Fs::readable`].
//!
//! When the API cannot be reached, what needs it fails at once with EIO while a background
//! probe waits for it to come back (`reach`, [`Fs::start`]).
//!
//! # Layout
//! - this file: the operations the FUSE adapter calls (`lookup`, `getattr`, `opendir`, `open`,
//!   `read`, `release`), the configuration and the shared state;
//! - `error`: [`FsError`] and its errno; `node`: inodes; `attr`: attributes and sizes;
//! - `entries`: directory entries; `listing`: listing dates (with `plan`, the pure planner, and
//!   `index`, what is known of the call log); `lookup`: by-session and by-recording ids;
//!   `persist`: the call index on disk; `reach`: an API that does not answer, and the start;
//!   `live`: the event feed, kernel invalidations ([`Changes`]) and readable announcements;
//! - `xattr`: `user.ringcentral.*` attributes; `csv`: each date's `calls.csv`.

mod attr;
mod csv;
mod entries;
mod error;
mod index;
mod listing;
mod live;
mod lookup;
mod node;
mod persist;
mod plan;
mod reach;
mod xattr;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use bytes::Bytes;
use jiff::Timestamp;
use jiff::civil::Date;

use crate::api::{ApiError, Priority, Scope};
use crate::catalog::{self, AudioKind, Window};
use crate::media::{BoxFuture, Media, MediaError, RecordingKey};
use crate::model::{CallRecord, RecordingMeta};

pub use attr::{Attr, DirEntry, Kind, Opened};
pub use error::FsError;
pub use index::{Index, KnownRecording, Session};
pub use live::{Changes, FETCH_TRIES, Feed, LiveCounters, Readable, SESSIONS_CAP, fetch_waits};
use node::{BY_RECORDING, BY_SESSION, CALL_JSON, CALLS_CSV, Inodes, Node};
pub use xattr::{PREFIX as XATTR_PREFIX, Xattr, name_list as xattr_name_list};

/// One page of the call log (the model's type, named for the [`CallLog`] trait).
pub use crate::model::CallLogPage as Page;

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
    fn recording_meta<'a>(
        &'a self,
        id: &'a str,
        prio: Priority,
    ) -> BoxFuture<'a, Result<RecordingMeta, ApiError>>;
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
    /// How many dates' records a core over a call index holds in memory at most (beyond the
    /// dates that may still change); [`DATES_IN_MEMORY`] unless tuned.
    pub dates_in_memory: usize,
    /// How long after the end of a call announced by the event feed its record is first asked
    /// for, until the mount has seen how long records take (then it goes by that; see `live`).
    pub record_delay: Duration,
    /// While the event feed is live: how long a listing of a date that may still change is
    /// reused instead of `recent_ttl` (the safety re-list that catches what events missed).
    pub live_relist: Duration,
    /// How long a lookup of a session or recording the event feed announced (in progress or
    /// just ended) waits for its record. Longer than `read_timeout` on purpose: the call may
    /// still be going on, and the wait spends no request.
    pub live_wait: Duration,
}

/// How many settled dates' records stay in memory with a call index; the least recently used is
/// read from disk again when needed (one query, no request). A date of a call centre is about
/// 1,000 calls and each held call costs some 10 KB (its record with the raw JSON, its session
/// and recording entries), so 8 dates are about 100 MB whatever the window, where a 90-day
/// window of 100,000 calls held at once was about 1 GB; 8 covers browsing back and forth over
/// a week.
pub const DATES_IN_MEMORY: usize = 8;

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
            dates_in_memory: DATES_IN_MEMORY,
            record_delay: Duration::from_secs(2),
            live_relist: Duration::from_secs(15 * 60),
            live_wait: Duration::from_secs(120),
        }
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
    /// Calls per second of what was listed (for forward spans).
    density: plan::Density,
    /// Ids looked up in by-session / by-recording and not found, with when.
    negative: HashMap<String, Instant>,
    /// Open recording handles: fh -> recording key.
    handles: HashMap<u64, RecordingKey>,
    /// Open `calls.csv` handles: fh -> the bytes rendered at open.
    csv_handles: HashMap<u64, Bytes>,
    /// Where every call is known: the spans listed, by this mount and (from the call index)
    /// the ones before it.
    coverage: persist::Coverage,
    /// The start of the newest record the call index held, while the catch-up query from it
    /// (see `persist`) is still to be sent.
    catch_up: Option<Timestamp>,
    /// Dates whose records in the call index were read into `index` (see `persist`).
    loaded: HashSet<Date>,
    /// Dates with records not written to the call index yet, with the number
    /// [`crate::store::MetaStore::written`] reaches once they are.
    unwritten: HashMap<Date, u64>,
    /// What the event feed said (see `live`).
    live: live::LiveState,
    /// Dates recordings were opened in (see [`Fs::reading`]): when last, which recording,
    /// and how many times a recording other than the one before was opened.
    reading: HashMap<Date, (Instant, String, u32)>,
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
    /// Where what the call log returns is kept for the next mount, if anywhere.
    meta: Option<Arc<crate::store::MetaStore>>,
    /// Whether the API answers (see `reach`).
    reach: Arc<reach::Reach>,
    /// `open` hands out the files of recordings complete on disk (see [`Opened::backing`]).
    backing_files: AtomicBool,
    /// Where kernel invalidations go, once the adapter set it (see [`Changes`]).
    changes: std::sync::OnceLock<Arc<dyn Changes>>,
    /// Recordings that became readable (see [`Fs::readable`]).
    readable: tokio::sync::broadcast::Sender<Readable>,
}

/// A date being read ([`Fs::reading`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub date: Date,
    /// Its recordings the mount knows of.
    pub recordings: usize,
    /// Those never fetched (neither asked of the media layer nor complete on disk).
    pub unfetched: usize,
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
                density: plan::Density::default(),
                negative: HashMap::new(),
                handles: HashMap::new(),
                csv_handles: HashMap::new(),
                coverage: persist::Coverage::default(),
                catch_up: None,
                loaded: HashSet::new(),
                unwritten: HashMap::new(),
                live: live::LiveState::default(),
                reading: HashMap::new(),
            }),
            config,
            listing: tokio::sync::Mutex::new(()),
            pages: tokio::sync::watch::Sender::new(0),
            next_fh: AtomicU64::new(1),
            mounted_at: SystemTime::now(),
            meta: None,
            reach: Arc::default(),
            backing_files: AtomicBool::new(false),
            changes: std::sync::OnceLock::new(),
            readable: tokio::sync::broadcast::Sender::new(live::READABLE_BACKLOG),
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    pub fn media(&self) -> &Arc<Media> {
        &self.media
    }

    /// Whether `open` hands out the files of recordings complete on disk: the FUSE adapter asks
    /// for them once the kernel agreed to passthrough, and stops when the kernel refuses one.
    pub fn offer_backing_files(&self, on: bool) {
        self.backing_files.store(on, Ordering::Relaxed);
    }

    /// The node an inode number names; ENOENT for one the kernel should not know.
    fn node_of(&self, ino: u64) -> Result<Node, FsError> {
        self.state()
            .inodes
            .node(ino)
            .cloned()
            .ok_or(FsError::NotFound)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The dates being read through: a recording of the date was opened during the last
    /// `within`, and recordings of it were opened one after another (two different ones at
    /// least, so a player opening one file again and again is not a copy), newest use first,
    /// with their recordings and how many of those were never fetched (see
    /// [`Media::unfetched`]): the work left when a program reads a date through (`cp -r`,
    /// `rsync`). No request.
    pub fn reading(&self, within: Duration) -> Vec<Reading> {
        let now = Instant::now();
        let mut dates: Vec<(Date, Vec<String>, Instant)> = {
            let mut st = self.state();
            st.reading
                .retain(|_, (at, _, _)| now.saturating_duration_since(*at) < within);
            let st = &*st;
            st.reading
                .iter()
                .filter(|(_, (_, _, distinct))| *distinct >= 2)
                .map(|(d, (at, _, _))| {
                    let ids = st
                        .index
                        .sessions_on(*d)
                        .flat_map(|s| s.recordings().into_iter().map(|r| r.id.to_string()))
                        .collect();
                    (*d, ids, *at)
                })
                .collect()
        };
        dates.sort_by_key(|(_, _, at)| std::cmp::Reverse(*at));
        dates
            .into_iter()
            .map(|(date, ids, _)| Reading {
                date,
                recordings: ids.len(),
                unfetched: self.media.unfetched(ids.iter().map(String::as_str)),
            })
            .collect()
    }

    /// Where the recording `id` is in the tree (relative to the mount root), when the call log
    /// placed it. No request.
    pub fn path_of(&self, id: &str) -> Option<String> {
        let st = self.state();
        let session = st.index.recordings.get(id)?.session_id.clone()?;
        let s = st.index.sessions.get(&session)?;
        let tz = &self.config.window.tz;
        let record = s
            .records
            .iter()
            .find(|r| r.recordings.iter().any(|x| x.id == id))
            .unwrap_or(s.first());
        let date = self.config.window.date_of(s.first().start_time);
        Some(format!(
            "{}/{}/{}",
            catalog::date_dir_name(date),
            catalog::session_dir_name(s.first(), tz),
            catalog::recording_file_name(record, id, self.kind_of(&st, id), tz)
        ))
    }

    /// The call log in use (`None` until the first listing decided it).
    pub fn scope_in_use(&self) -> Option<Scope> {
        self.state().scope
    }

    /// How many dates' records are held in memory.
    pub fn dates_in_memory(&self) -> usize {
        self.state().index.by_date.len()
    }

    pub async fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let node = self.node_of(ino)?;
        self.hold(&node).await;
        let st = self.state();
        self.attr_of(&st, ino, &node)
    }

    pub async fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, FsError> {
        let name = name.to_str().ok_or(FsError::NotFound)?;
        if catalog::is_probe_name(name) {
            return Err(FsError::NotFound);
        }
        let parent_node = self.node_of(parent)?;
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
            Node::Date(date) if name == CALLS_CSV => {
                self.ensure_date(date).await?;
                Node::CallsCsv(date)
            }
            Node::Date(date) => {
                // `HH-MM-SS dir party <sessionId>`: anything else is refused before it costs
                // a listing.
                if !has_time_prefix(name) {
                    return Err(FsError::NotFound);
                }
                self.ensure_date(date).await?;
                let st = self.state();
                let session = self
                    .session_named(&st, date, name)
                    .ok_or(FsError::NotFound)?;
                Node::SessionDir {
                    session,
                    by_session: false,
                }
            }
            Node::BySession => {
                self.resolve_session(name).await?;
                Node::SessionDir {
                    session: name.to_string(),
                    by_session: true,
                }
            }
            Node::SessionDir {
                session,
                by_session,
            } => {
                if name == CALL_JSON {
                    Node::CallJson {
                        session,
                        by_session,
                    }
                } else {
                    self.hold_session(&session).await;
                    let mut st = self.state();
                    let children = self.session_children(&mut st, &session, by_session);
                    // The exact current name, or the same name with the other audio extension (a
                    // name the kernel may still hold from before the real format was learned).
                    // The node comes from the entry, not from the id at the end of the name: that
                    // is the id as names show it, which need not be the recording's real id.
                    let stem = |n: &str| n.rsplit_once('.').map(|(s, _)| s.to_owned());
                    let is_recording = |n: &str| catalog::split_recording_name(n).is_some();
                    let entry = children.iter().find(|e| e.name == name).or_else(|| {
                        children.iter().find(|e| {
                            is_recording(name)
                                && is_recording(&e.name)
                                && stem(&e.name) == stem(name)
                        })
                    });
                    entry
                        .and_then(|e| st.inodes.node(e.ino).cloned())
                        .ok_or(FsError::NotFound)?
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
            Node::CallJson { .. }
            | Node::CallsCsv(_)
            | Node::RecFile { .. }
            | Node::ByRecFile(_) => {
                return Err(FsError::NotDir);
            }
        };
        let mut st = self.state();
        let ino = st.inodes.ino(node.clone());
        self.attr_of(&st, ino, &node)
    }

    /// The entries of a directory (without `.` and `..`), computed once per `opendir` so that
    /// readdir paging is consistent, each with the attributes `lookup` would give when they are
    /// known without a request (READDIRPLUS: `ls -l` of a date then costs the kernel no lookup).
    pub async fn opendir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let mut entries = self.entries(ino).await?;
        let st = self.state();
        for e in &mut entries {
            if let Some(node) = st.inodes.node(e.ino) {
                e.attr = self.attr_of(&st, e.ino, node).ok();
            }
        }
        Ok(entries)
    }

    async fn entries(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let node = self.node_of(ino)?;
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
                        attr: None,
                    });
                }
                out.push(DirEntry {
                    ino: st.inodes.ino(Node::BySession),
                    kind: Kind::Dir,
                    name: BY_SESSION.into(),
                    attr: None,
                });
                out.push(DirEntry {
                    ino: st.inodes.ino(Node::ByRecording),
                    kind: Kind::Dir,
                    name: BY_RECORDING.into(),
                    attr: None,
                });
                Ok(out)
            }
            Node::Date(date) => {
                if !self.config.window.contains(date, Timestamp::now()) {
                    return Err(FsError::NotFound);
                }
                self.ensure_date(date).await?;
                let mut st = self.state();
                let mut out = self.date_children(&mut st, date);
                let node = Node::CallsCsv(date);
                let ino = st.inodes.ino(node.clone());
                let attr = self.attr_of(&st, ino, &node).ok();
                out.push(DirEntry {
                    ino,
                    kind: Kind::File,
                    name: CALLS_CSV.to_string(),
                    attr,
                });
                Ok(out)
            }
            Node::SessionDir {
                session,
                by_session,
            } => {
                self.hold_session(&session).await;
                let mut st = self.state();
                if !st.index.sessions.contains_key(&session) {
                    return Err(FsError::NotFound);
                }
                Ok(self.session_children(&mut st, &session, by_session))
            }
            Node::BySession => {
                let (stored, _) = self.stored_ids().await;
                let mut st = self.state();
                let ids: BTreeSet<String> = st
                    .index
                    .sessions
                    .values()
                    .filter(|s| !s.recordings().is_empty())
                    .map(|s| s.session_id.clone())
                    .chain(stored)
                    .collect();
                Ok(ids
                    .into_iter()
                    .map(|id| DirEntry {
                        ino: st.inodes.ino(Node::SessionDir {
                            session: id.clone(),
                            by_session: true,
                        }),
                        kind: Kind::Dir,
                        name: id,
                        attr: None,
                    })
                    .collect())
            }
            Node::ByRecording => {
                let (_, stored) = self.stored_ids().await;
                let mut st = self.state();
                let ids: BTreeSet<String> =
                    st.index.recordings.keys().cloned().chain(stored).collect();
                Ok(ids
                    .into_iter()
                    .map(|id| {
                        let name = catalog::by_recording_name(&id, self.kind_of(&st, &id));
                        DirEntry {
                            ino: st.inodes.ino(Node::ByRecFile(id)),
                            kind: Kind::File,
                            name,
                            attr: None,
                        }
                    })
                    .collect())
            }
            Node::CallJson { .. }
            | Node::CallsCsv(_)
            | Node::RecFile { .. }
            | Node::ByRecFile(_) => Err(FsError::NotDir),
        }
    }

    /// Opens a file for reading. A recording's content URI is resolved and its download started
    /// here (waiting for the response headers, about one round trip), so the size and format are
    /// known before the first read.
    pub async fn open(&self, ino: u64, write: bool) -> Result<Opened, FsError> {
        let node = self.node_of(ino)?;
        if write {
            return Err(FsError::ReadOnly);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        match node {
            Node::CallJson { session, .. } => {
                // On a recent date the record may be replaced (a re-list, the event feed's
                // fetch) under a size the kernel holds: direct I/O, so a read is never cut or
                // padded by a stale size. A settled date's never changes: the page cache keeps it.
                let changing = {
                    let st = self.state();
                    let s = st.index.sessions.get(&session).ok_or(FsError::NotFound)?;
                    self.call_json_may_change(s)
                };
                Ok(Opened {
                    fh,
                    keep_cache: !changing,
                    direct_io: changing,
                    backing: None,
                })
            }
            Node::CallsCsv(date) => {
                self.load_date(date).await;
                let mut st = self.state();
                let csv = Bytes::from(self.calls_csv(&st, date));
                st.csv_handles.insert(fh, csv);
                // The content may change under a size the kernel holds: new rows on a recent
                // date, and on any date the paths' extension once a recording's real format
                // is learned. Direct I/O, so reads are never cut or padded by a stale size
                // (the bytes are this handle's snapshot).
                Ok(Opened {
                    fh,
                    keep_cache: false,
                    direct_io: true,
                    backing: None,
                })
            }
            Node::RecFile { id, .. } | Node::ByRecFile(id) => {
                self.hold_recording(&id).await;
                let (key, start, duration) = {
                    let mut st = self.state();
                    let rec = st.index.recordings.get(&id).ok_or(FsError::NotFound)?;
                    let date = rec
                        .session_id
                        .as_deref()
                        .and_then(|s| st.index.date_of_session(s, &self.config.window))
                        .or_else(|| rec.start.map(|t| self.config.window.date_of(t)));
                    let rec = rec.clone();
                    if let Some(date) = date {
                        let mark =
                            st.reading
                                .entry(date)
                                .or_insert((Instant::now(), String::new(), 0));
                        if mark.1 != id {
                            mark.1 = id.clone();
                            mark.2 += 1;
                        }
                        mark.0 = Instant::now();
                    }
                    (
                        RecordingKey {
                            id: id.clone(),
                            content_uri: rec.content_uri.clone(),
                        },
                        rec.start,
                        rec.duration,
                    )
                };
                let known = match self.open_media(&key).await {
                    Ok(known) => known,
                    Err(MediaError::NotAvailable(msg)) => {
                        // Listed but not fetchable: the call has just ended and the recording
                        // is still being processed, or it is gone.
                        let ended = start.and_then(|s| {
                            s.checked_add(jiff::SignedDuration::from_secs(
                                duration.unwrap_or(0) as i64
                            ))
                            .ok()
                        });
                        let recent = ended
                            .is_none_or(|e| Timestamp::now().duration_since(e).as_secs() < 3600);
                        let e = MediaError::NotAvailable(msg);
                        return Err(if recent {
                            FsError::NotYet { id, source: e }
                        } else {
                            FsError::Media { id, source: e }
                        });
                    }
                    Err(e) => return Err(FsError::media(&id, e)),
                };
                self.learn_kind(&id, &known);
                let direct_io = known.size.is_none();
                let backing = if self.backing_files.load(Ordering::Relaxed) && !direct_io {
                    self.media.complete_file(&key).await
                } else {
                    None
                };
                self.state().handles.insert(fh, key);
                Ok(Opened {
                    fh,
                    keep_cache: !direct_io,
                    direct_io,
                    backing,
                })
            }
            Node::Root
            | Node::Date(_)
            | Node::SessionDir { .. }
            | Node::BySession
            | Node::ByRecording => Err(FsError::IsDir),
        }
    }

    pub async fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let node = self.node_of(ino)?;
        match node {
            Node::CallJson { session, .. } => {
                self.hold_session(&session).await;
                let st = self.state();
                let s = st.index.sessions.get(&session).ok_or(FsError::NotFound)?;
                let json = call_json(s);
                let start = (offset as usize).min(json.len());
                let end = start.saturating_add(size as usize).min(json.len());
                Ok(Bytes::copy_from_slice(&json[start..end]))
            }
            Node::CallsCsv(_) => {
                let st = self.state();
                let csv = st.csv_handles.get(&fh).ok_or(FsError::BadHandle)?;
                let start = (offset as usize).min(csv.len());
                let end = start.saturating_add(size as usize).min(csv.len());
                Ok(csv.slice(start..end))
            }
            Node::RecFile { id, .. } | Node::ByRecFile(id) => {
                let key = self
                    .state()
                    .handles
                    .get(&fh)
                    .cloned()
                    .ok_or(FsError::BadHandle)?;
                self.media
                    .read(&key, offset, size, Priority::Interactive)
                    .await
                    .map_err(|e| FsError::media(&id, e))
            }
            _ => Err(FsError::IsDir),
        }
    }

    pub fn release(&self, fh: u64) {
        let key = {
            let mut st = self.state();
            st.csv_handles.remove(&fh);
            st.handles.remove(&fh)
        };
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
        && b[..8].iter().enumerate().all(|(i, c)| {
            if i % 3 == 2 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// `call.json`: the session's record as the API returned it (an array when the session has
/// several records), pretty-printed.
pub fn call_json(s: &Session) -> Vec<u8> {
    let value = if s.records.len() == 1 {
        s.records[0].raw.value()
    } else {
        serde_json::Value::Array(s.records.iter().map(|r| r.raw.value()).collect())
    };
    let mut out = serde_json::to_vec_pretty(&value).unwrap_or_default();
    out.push(b'\n');
    out
}

fn to_system(t: Timestamp) -> SystemTime {
    SystemTime::try_from(t).unwrap_or(SystemTime::UNIX_EPOCH)
}
