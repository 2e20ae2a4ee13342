//! The disk tier: recording content in files, and an SQLite index of what each file holds.
//!
//! # Layout
//!
//! ```text
//! <cache dir>/                 0700
//!   lock                       0600  flock(2)ed by the process that uses the directory
//!   index.sqlite (-wal, -shm)  0600  the index, WAL journal
//!   recordings/                0700
//!     <xxh3-128 of the id>     0600  content from byte 0 (a prefix, or all of it)
//! ```
//!
//! Ids may contain `/` or spaces, so a file is named by a hash of its id (128 bits: a collision
//! would need about 2^64 recordings); the index keeps the name too.
//!
//! # Crash safety
//!
//! Bytes are appended to a file and `fsync`ed *before* the index's `stored` column says they are
//! there, and `crc32` is always the CRC-32 of exactly those `stored` bytes; a recording is complete
//! when `stored = size`, so its checksum covers the whole content. After `kill -9` at any instant
//! the index claims at most what the file durably holds: what was written since the last index
//! update is lost, nothing else. Bytes past `stored` (written, not yet claimed) are cut off when
//! the store is opened. Files are synced every [`SYNC_EVERY`] bytes, when a download ends, when
//! the writer has been idle for [`IDLE_SYNC`], and at [`DiskStore::shutdown`].
//!
//! # Never serving damage
//!
//! Opening the store discards (file and row, counted in [`DiskStats::discarded`]) every recording
//! whose file is missing or shorter than `stored`, and deletes files the index does not name. The
//! first read of a recording in a process checks the CRC of its stored bytes and discards it on a
//! mismatch; the caller then fetches it again.
//!
//! # Space
//!
//! The store keeps within [`StoreConfig::max_bytes`] and leaves [`StoreConfig::keep_free_bytes`] or
//! [`StoreConfig::keep_free_percent`] of the filesystem free, whichever is larger, by evicting
//! least recently used recordings before a write. A recording with a [`Lease`] (open by a reader,
//! or being written) is never evicted. When no room can be made, or a write fails (ENOSPC, EIO),
//! writing that recording stops for the rest of the process, logged once: readers are served from
//! memory and the network as if there were no disk.
//!
//! # Threads
//!
//! Writes go through a channel to one writer thread, so a download never blocks on the disk; the
//! bytes queued are bounded by a semaphore ([`Writer::reserve`]), which is the only thing a
//! download awaits. Reads ([`DiskStore::read`]) are blocking calls: callers on tokio use
//! `spawn_blocking`. Two locks: `io` (the SQLite connection and open files) is held across I/O;
//! `meta` (what is stored, for callers that hold their own locks, such as the media layer's) is
//! never held across I/O and never held while taking `io`.

use std::collections::{HashMap, HashSet};
use std::fs::{DirBuilder, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Semaphore;

use super::tier::{CompleteFile, ReserveFuture, Reserved, StoredRecording, TierLease};

/// The index schema this code writes. [`migrate`] brings older indexes up to it.
pub const SCHEMA_VERSION: i32 = 3;

/// Unsynced bytes of one recording after which the writer syncs and updates the index.
pub const SYNC_EVERY: u64 = 1 << 20;

/// The writer syncs everything written once it has had nothing to do for this long.
pub const IDLE_SYNC: Duration = Duration::from_millis(500);

/// Bytes (in KiB) that may wait in the writer's queue; a download past it waits.
const QUEUE_KIB: u32 = 16 << 10;

/// Limits of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Most content bytes kept, all recordings together.
    pub max_bytes: u64,
    /// Leave at least this much of the filesystem free...
    pub keep_free_bytes: u64,
    /// ...or this percentage of it, whichever is larger. Both 0: no such rule (a full filesystem
    /// then shows as a write error, which stops writing the recording).
    pub keep_free_percent: u8,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_bytes: 10 << 30,
            keep_free_bytes: 1 << 30,
            keep_free_percent: 5,
        }
    }
}

/// Counters of the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Recordings held now (complete or partial).
    pub recordings: u64,
    /// Content bytes held now.
    pub bytes: u64,
    /// Recordings dropped because their file did not match the index.
    pub discarded: u64,
    /// Recordings evicted to stay within the limits.
    pub evicted: u64,
    /// Recordings whose writing stopped (a write error, or no room).
    pub write_errors: u64,
    /// Content bytes written and read in this process.
    pub bytes_written: u64,
    pub bytes_read: u64,
}

/// One recording as the in-memory view has it.
struct View {
    size: Option<u64>,
    content_type: Option<String>,
    /// Bytes in the file, readable in this process.
    written: u64,
    /// Bytes the index claims, and the CRC-32 of exactly those.
    durable: u64,
    crc: u32,
    last_used: i64,
    /// `last_used` changed since the index was told.
    used_dirty: bool,
    /// Checked against its checksum in this process (or written by it).
    verified: bool,
    file: String,
}

#[derive(Default)]
struct Meta {
    views: HashMap<String, View>,
    leases: HashMap<String, u32>,
    /// Recordings not to be written any more in this process.
    disabled: HashSet<String>,
    stats: DiskStats,
}

/// A file being appended to by the writer.
struct Appending {
    file: File,
    hasher: crc32fast::Hasher,
    written: u64,
}

struct Io {
    db: Connection,
    appending: HashMap<String, Appending>,
}

/// What the store shares with its writer thread.
struct Core {
    dir: PathBuf,
    config: StoreConfig,
    meta: Mutex<Meta>,
    io: Mutex<Io>,
}

enum Msg {
    Append {
        id: Arc<str>,
        offset: u64,
        data: Bytes,
        known: Known,
        _room: Reserved,
    },
    Close {
        id: Arc<str>,
        known: Known,
    },
    Shutdown,
}

#[derive(Clone, Debug, Default)]
struct Known {
    size: Option<u64>,
    content_type: Option<String>,
}

/// The persistent store of recording content. See the module docs.
pub struct DiskStore {
    core: Arc<Core>,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    queue: Arc<Semaphore>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Holds the directory's `flock` until [`DiskStore::shutdown`].
    lock: Mutex<Option<File>>,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("dir", &self.core.dir)
            .field("config", &self.core.config)
            .finish()
    }
}

/// [`DiskStore::open`] failed because another process (a running mount) holds the directory.
#[derive(Debug, thiserror::Error)]
#[error("cache directory {} is in use by another ringfs process", .0.display())]
pub struct InUse(pub PathBuf);

/// What [`summary`] finds in a store directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Recordings whose whole content is held.
    pub complete: u64,
    /// Recordings of which only a prefix is held.
    pub partial: u64,
    /// Content bytes the index claims, all recordings together.
    pub bytes: u64,
}

/// Keeps a recording from being evicted while it lives (an open file, a download writing).
pub struct Lease {
    core: Arc<Core>,
    id: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut m = lock(&self.core.meta);
        if let Some(n) = m.leases.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                m.leases.remove(&self.id);
            }
        }
    }
}

/// Writes one download's bytes through to the store, in order. Dropping it tells the writer the
/// download ended (its bytes are synced then).
pub struct Writer {
    store: Arc<DiskStore>,
    id: Arc<str>,
    known: Known,
    _lease: Lease,
}

impl Writer {
    /// Waits for room for `len` bytes in the queue. `None`: the store is not writing this
    /// recording (disabled, or shut down).
    pub async fn reserve(&self, len: usize) -> Option<Reserved> {
        if lock(&self.store.core.meta).disabled.contains(&*self.id)
            || lock(&self.store.tx).is_none()
        {
            return None;
        }
        let kib = (len.div_ceil(1024) as u32).clamp(1, QUEUE_KIB);
        self.store
            .queue
            .clone()
            .acquire_many_owned(kib)
            .await
            .ok()
            .map(Reserved::new)
    }

    /// Queues `data`, the content at `offset`. The store keeps it only where it continues what
    /// is stored; never blocks.
    pub fn append(&self, offset: u64, data: Bytes, room: Reserved) {
        let msg = Msg::Append {
            id: self.id.clone(),
            offset,
            data,
            known: self.known.clone(),
            _room: room,
        };
        self.store.send(msg);
    }

    /// What the download learned of the recording (sent with the next bytes and at the end).
    pub fn learn(&mut self, size: Option<u64>, content_type: Option<&str>) {
        if size.is_some() {
            self.known.size = size;
        }
        if let Some(ct) = content_type {
            self.known.content_type = Some(ct.to_string());
        }
    }
}

impl super::tier::TierWriter for Writer {
    fn reserve(&self, len: usize) -> ReserveFuture<'_> {
        Box::pin(Writer::reserve(self, len))
    }

    fn append(&self, offset: u64, data: Bytes, room: Reserved) {
        Writer::append(self, offset, data, room)
    }

    fn learn(&mut self, size: Option<u64>, content_type: Option<&str>) {
        Writer::learn(self, size, content_type)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.store.send(Msg::Close {
            id: self.id.clone(),
            known: std::mem::take(&mut self.known),
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A use time: Unix milliseconds, strictly increasing within the process, so that recordings used
/// one after the other are evicted in that order even within one millisecond.
fn use_time() -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let prev = LAST.fetch_max(now, Ordering::Relaxed);
    if prev < now {
        now
    } else {
        LAST.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The file name of a recording's content: a hash of its id.
fn file_name(id: &str) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(id.as_bytes()))
}

/// Brings the index from whatever version it has to [`SCHEMA_VERSION`]. Each step is one
/// transaction; a later version adds its tables as one more step.
pub fn migrate(db: &mut Connection) -> anyhow::Result<()> {
    let version: i32 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        bail!(
            "the cache index has schema version {version}, newer than this ringfs ({SCHEMA_VERSION})"
        );
    }
    if version < 1 {
        let tx = db.transaction()?;
        tx.execute_batch(
            "CREATE TABLE recordings (
                 id           TEXT PRIMARY KEY,
                 file         TEXT NOT NULL UNIQUE,
                 content_type TEXT,
                 size         INTEGER,
                 stored       INTEGER NOT NULL,
                 crc32        INTEGER NOT NULL,
                 last_used    INTEGER NOT NULL -- Unix milliseconds
             );
             PRAGMA user_version = 1;",
        )?;
        tx.commit()?;
    }
    if version < 2 {
        // The call index (see `super::meta`): call-log records by id with their UTC start, the
        // UTC spans listed completely and when, and single facts (scope, recording format).
        let tx = db.transaction()?;
        tx.execute_batch(
            "CREATE TABLE calls (
                 id         TEXT PRIMARY KEY,  -- call-log record id
                 session_id TEXT NOT NULL,
                 start_ms   INTEGER NOT NULL,  -- startTime, Unix milliseconds (UTC)
                 json       TEXT NOT NULL      -- the record as the API returned it
             );
             CREATE INDEX calls_by_start ON calls (start_ms);
             CREATE TABLE listed (
                 from_ms      INTEGER NOT NULL,  -- [from, to): every record in it is in `calls`
                 to_ms        INTEGER NOT NULL,
                 listed_at_ms INTEGER NOT NULL   -- as of this instant
             );
             CREATE TABLE facts (
                 key   TEXT PRIMARY KEY,
                 value TEXT NOT NULL
             );
             PRAGMA user_version = 2;",
        )?;
        tx.commit()?;
    }
    if version < 3 {
        // The call index read date by date (see `super::meta`): a session's records by session
        // id, and which calls carry a recording, filled from the records already kept.
        let tx = db.transaction()?;
        tx.execute_batch(
            "CREATE INDEX calls_by_session ON calls (session_id);
             CREATE TABLE call_recordings (
                 recording_id TEXT NOT NULL,
                 call_id      TEXT NOT NULL,  -- calls.id
                 start_ms     INTEGER NOT NULL, -- the call's, for dropping old rows with it
                 PRIMARY KEY (recording_id, call_id)
             );
             INSERT OR IGNORE INTO call_recordings (recording_id, call_id, start_ms)
                 SELECT CAST(json_extract(json, '$.recording.id') AS TEXT), id, start_ms FROM calls
                 WHERE json_extract(json, '$.recording.id') IS NOT NULL;
             INSERT OR IGNORE INTO call_recordings (recording_id, call_id, start_ms)
                 SELECT CAST(json_extract(leg.value, '$.recording.id') AS TEXT), calls.id, start_ms
                 FROM calls, json_each(calls.json, '$.legs') AS leg
                 WHERE json_extract(leg.value, '$.recording.id') IS NOT NULL;
             PRAGMA user_version = 3;",
        )?;
        tx.commit()?;
    }
    Ok(())
}

fn make_private_dir(path: &Path) -> anyhow::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn private_file(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Bytes the filesystem of `dir` must keep free, and bytes it has free now (for unprivileged
/// users); `None` without a free-space rule.
fn free_space(dir: &Path, config: &StoreConfig) -> Option<(u64, u64)> {
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let frsize = s.f_frsize as u64;
    let total = (s.f_blocks as u64).saturating_mul(frsize);
    let keep = config
        .keep_free_bytes
        .max(total / 100 * config.keep_free_percent as u64);
    (keep > 0).then(|| (keep, (s.f_bavail as u64).saturating_mul(frsize)))
}

/// The CRC-32 of the first `len` bytes of `file`.
fn crc_of(file: &File, len: u64) -> std::io::Result<u32> {
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut at = 0;
    while at < len {
        let n = ((len - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(h.finalize())
}

impl DiskStore {
    /// Opens (creating if needed) the store in `dir`: takes the directory's lock (one process per
    /// directory), checks the index against the files (see the module docs), evicts down to the
    /// limits, and starts the writer thread. Blocking: call it before serving.
    pub fn open(dir: &Path, config: StoreConfig) -> anyhow::Result<Arc<DiskStore>> {
        make_private_dir(dir)?;
        make_private_dir(&dir.join("recordings"))?;
        let lock_file = private_file(&dir.join("lock")).context("opening the cache lock")?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(InUse(dir.to_path_buf()).into());
        }
        let index = dir.join("index.sqlite");
        drop(private_file(&index).context("creating the cache index")?);
        let mut db = Connection::open(&index).context("opening the cache index")?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        // WAL + NORMAL survives a killed process; a power cut may lose the last updates, which
        // only makes the index claim less than the files hold.
        db.pragma_update(None, "synchronous", "NORMAL")?;
        migrate(&mut db)?;
        for side in ["index.sqlite-wal", "index.sqlite-shm"] {
            let p = dir.join(side);
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
            }
        }
        let core = Arc::new(Core {
            dir: dir.to_path_buf(),
            config,
            meta: Mutex::new(Meta::default()),
            io: Mutex::new(Io {
                db,
                appending: HashMap::new(),
            }),
        });
        core.load()?;
        // Within the byte cap (it may have been lowered); free space is only made for a write,
        // so a disk filled by others does not empty the cache at every mount.
        core.make_room(None, 0, false);
        let (tx, rx) = mpsc::channel();
        let writer_core = core.clone();
        let thread = std::thread::Builder::new()
            .name("ringfs-disk".into())
            .spawn(move || writer_core.run(rx))
            .context("starting the disk writer")?;
        Ok(Arc::new(DiskStore {
            core,
            tx: Mutex::new(Some(tx)),
            queue: Arc::new(Semaphore::new(QUEUE_KIB as usize)),
            thread: Mutex::new(Some(thread)),
            lock: Mutex::new(Some(lock_file)),
        }))
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.core.dir
    }

    /// What is held of `id` (in memory: no I/O, cheap enough under other locks). `stored` counts
    /// the bytes readable now; the index claims them once they are synced.
    pub fn get(&self, id: &str) -> Option<StoredRecording> {
        lock(&self.core.meta)
            .views
            .get(id)
            .map(|v| StoredRecording {
                size: v.size,
                content_type: v.content_type.clone(),
                stored: v.written,
            })
    }

    /// The bytes held of `[offset, offset + len)`, from `offset` up to what is stored (shorter
    /// past that); `None` when the store holds no byte at `offset`. The first read of a recording
    /// in a process checks its checksum, and a recording that fails it is discarded (`None`).
    /// Blocking.
    pub fn read(&self, id: &str, offset: u64, len: usize) -> Option<Bytes> {
        self.core.read(id, offset, len)
    }

    /// Keeps `id` from eviction until the lease is dropped.
    pub fn lease(&self, id: &str) -> Lease {
        let mut m = lock(&self.core.meta);
        *m.leases.entry(id.to_string()).or_default() += 1;
        if let Some(v) = m.views.get_mut(id) {
            v.last_used = use_time();
            v.used_dirty = true;
        }
        Lease {
            core: self.core.clone(),
            id: id.to_string(),
        }
    }

    /// `id`'s file, read-only, when the store holds all of its content and the content matches
    /// its checksum (checked once per process, as [`DiskStore::read`] does: a mismatch discards
    /// the recording, `None`). The lease is taken first, so the file cannot be evicted between
    /// the check and the caller's use. Blocking.
    pub fn open_complete(&self, id: &str) -> Option<CompleteFile> {
        let lease = self.lease(id);
        let size = {
            let m = lock(&self.core.meta);
            let v = m.views.get(id)?;
            v.size.filter(|s| *s == v.written && *s > 0)?
        };
        let (file, io) = self.core.checked_file(id)?;
        drop(io);
        // The view may have changed while the file was opened (only a discard can change a
        // complete one, and that unlinks the file): check the length of what was opened.
        if file.metadata().ok()?.len() != size {
            return None;
        }
        Some(CompleteFile::new(file, size, Box::new(lease)))
    }

    /// Removes every recording that is not leased (index rows first, then the files), and
    /// returns how many recordings and content bytes went. Used by `ringfs cache clear`, which
    /// opens the store for this, so no mount holds the directory meanwhile.
    pub fn clear(&self) -> (u64, u64) {
        let victims: Vec<(String, String, u64)> = {
            let m = lock(&self.core.meta);
            m.views
                .iter()
                .filter(|(id, _)| !m.leases.contains_key(*id))
                .map(|(id, v)| (id.clone(), v.file.clone(), v.written))
                .collect()
        };
        let bytes = victims.iter().map(|(_, _, n)| n).sum();
        for (id, file, _) in &victims {
            self.core.remove(id, file);
        }
        (victims.len() as u64, bytes)
    }

    /// A writer for one download of `id` (it holds a lease while it lives).
    pub fn writer(self: &Arc<Self>, id: &str) -> Writer {
        Writer {
            store: self.clone(),
            id: Arc::from(id),
            known: Known::default(),
            _lease: self.lease(id),
        }
    }

    /// Counters.
    pub fn stats(&self) -> DiskStats {
        let m = lock(&self.core.meta);
        DiskStats {
            recordings: m.views.len() as u64,
            bytes: m.views.values().map(|v| v.written).sum(),
            ..m.stats.clone()
        }
    }

    /// Writes out everything queued, syncs it, records it in the index, stops the writer and
    /// releases the directory for another process; later writes are dropped. Blocking; called at
    /// unmount (and by `Drop`).
    pub fn shutdown(&self) {
        if let Some(tx) = lock(&self.tx).take() {
            let _ = tx.send(Msg::Shutdown);
        }
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
        lock(&self.lock).take();
    }

    fn send(&self, msg: Msg) {
        if let Some(tx) = lock(&self.tx).as_ref() {
            let _ = tx.send(msg);
        }
    }
}

/// The disk tier: the inherent methods, behind the interface the media layer uses. The trait is
/// named by path, not imported, so that calls on an `Arc<DiskStore>` here and in the tests keep
/// resolving to the inherent methods.
impl super::tier::Tier for DiskStore {
    fn get(&self, id: &str) -> Option<StoredRecording> {
        DiskStore::get(self, id)
    }

    fn read(&self, id: &str, offset: u64, len: usize) -> Option<Bytes> {
        DiskStore::read(self, id, offset, len)
    }

    fn lease(&self, id: &str) -> TierLease {
        Box::new(DiskStore::lease(self, id))
    }

    fn writer(self: Arc<Self>, id: &str) -> Box<dyn super::tier::TierWriter> {
        Box::new(DiskStore::writer(&self, id))
    }

    fn open_complete(&self, id: &str) -> Option<CompleteFile> {
        DiskStore::open_complete(self, id)
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Core {
    fn recording_path(&self, file: &str) -> PathBuf {
        self.dir.join("recordings").join(file)
    }

    /// Reads the index, drops what the files do not back, cuts bytes past what the index claims,
    /// and deletes files the index does not name.
    fn load(&self) -> anyhow::Result<()> {
        let io = lock(&self.io);
        type Row = (String, String, Option<String>, Option<i64>, i64, i64, i64);
        let rows: Vec<Row> = {
            let mut q = io.db.prepare(
                "SELECT id, file, content_type, size, stored, crc32, last_used FROM recordings",
            )?;
            q.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?
            .collect::<Result<_, _>>()?
        };
        let mut views = HashMap::new();
        let mut bad = Vec::new();
        for (id, file, content_type, size, stored, crc, last_used) in rows {
            let (size, stored) = (size.map(|s| s as u64), stored as u64);
            let path = self.recording_path(&file);
            let on_disk = std::fs::metadata(&path).map(|m| m.len()).ok();
            let fine = on_disk.is_some_and(|l| l >= stored) && size.is_none_or(|s| stored <= s);
            if !fine {
                tracing::warn!(recording = %id, ?on_disk, stored, "cached recording does not match its index; discarded");
                bad.push((id, file));
                continue;
            }
            if on_disk.is_some_and(|l| l > stored) {
                // Written but never claimed (the process stopped before the index update).
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(stored))?;
            }
            views.insert(
                id,
                View {
                    size,
                    content_type,
                    written: stored,
                    durable: stored,
                    crc: crc as u32,
                    last_used,
                    used_dirty: false,
                    verified: false,
                    file,
                },
            );
        }
        for (id, file) in &bad {
            io.db
                .execute("DELETE FROM recordings WHERE id = ?1", params![id])?;
            let _ = std::fs::remove_file(self.recording_path(file));
        }
        let named: HashSet<&str> = views.values().map(|v| v.file.as_str()).collect();
        for entry in std::fs::read_dir(self.dir.join("recordings"))? {
            let entry = entry?;
            if !named.contains(entry.file_name().to_string_lossy().as_ref()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let mut m = lock(&self.meta);
        m.stats.discarded += bad.len() as u64;
        m.views = views;
        Ok(())
    }

    /// The writer thread: one message at a time, in order.
    fn run(&self, rx: mpsc::Receiver<Msg>) {
        loop {
            match rx.recv_timeout(IDLE_SYNC) {
                Ok(Msg::Append {
                    id,
                    offset,
                    data,
                    known,
                    _room,
                }) => self.append(&id, offset, &data, &known),
                Ok(Msg::Close { id, known }) => {
                    self.learn(&id, &known);
                    let mut io = lock(&self.io);
                    self.sync(&mut io, &id);
                    io.appending.remove(&*id);
                }
                Ok(Msg::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Messages queued before the shutdown were handled above (one channel, in order).
                    self.sync_all();
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => self.sync_all(),
            }
        }
    }

    /// Takes in what a download learned, and completes the recording if that makes it complete.
    fn learn(&self, id: &str, known: &Known) {
        let complete = {
            let mut m = lock(&self.meta);
            let Some(v) = m.views.get_mut(id) else { return };
            if known.size.is_some() && v.size.is_none() {
                v.size = known.size;
            }
            if v.content_type.is_none() {
                v.content_type.clone_from(&known.content_type);
            }
            v.size == Some(v.written) && v.durable < v.written
        };
        if complete {
            let mut io = lock(&self.io);
            self.sync(&mut io, id);
        }
    }

    fn append(&self, id: &str, offset: u64, data: &[u8], known: &Known) {
        let (written, file, exists) = {
            let m = lock(&self.meta);
            if m.disabled.contains(id) {
                return;
            }
            match m.views.get(id) {
                Some(v) => (v.written, v.file.clone(), true),
                None => (0, file_name(id), false),
            }
        };
        let end = offset + data.len() as u64;
        if offset > written || end <= written {
            // Not contiguous with what is stored (a download past it), or already held.
            self.learn(id, known);
            return;
        }
        let data = &data[(written - offset) as usize..];
        if !self.make_room(Some(id), data.len() as u64, true) {
            self.disable(id, "no room within the disk cache's limits");
            return;
        }
        let mut io = lock(&self.io);
        if !io.appending.contains_key(id) {
            match self.start_appending(id, &file, exists) {
                Ok(a) => {
                    io.appending.insert(id.to_string(), a);
                }
                Err(e) => {
                    drop(io);
                    self.disable(id, &e.to_string());
                    return;
                }
            }
        }
        let a = io.appending.get_mut(id).expect("inserted above");
        if let Err(e) = a.file.write_all_at(data, a.written) {
            io.appending.remove(id);
            drop(io);
            self.disable(id, &e.to_string());
            return;
        }
        a.hasher.update(data);
        a.written += data.len() as u64;
        let now = a.written;
        let unsynced = {
            let mut m = lock(&self.meta);
            m.stats.bytes_written += data.len() as u64;
            let v = m.views.entry(id.to_string()).or_insert_with(|| View {
                size: None,
                content_type: None,
                written: 0,
                durable: 0,
                crc: 0,
                last_used: use_time(),
                used_dirty: true,
                verified: true,
                file,
            });
            v.written = now;
            now - v.durable
        };
        drop(io);
        self.learn(id, known);
        if unsynced >= SYNC_EVERY {
            let mut io = lock(&self.io);
            self.sync(&mut io, id);
        }
    }

    /// Opens a recording's file for appending after its stored prefix (or creates it).
    fn start_appending(&self, id: &str, file: &str, exists: bool) -> std::io::Result<Appending> {
        let path = self.recording_path(file);
        let (durable, crc) = match lock(&self.meta).views.get(id) {
            Some(v) if exists => (v.durable, v.crc),
            _ => (0, 0),
        };
        let f = private_file(&path)?;
        // Anything past the claimed prefix is unclaimed (a write that failed): cut it.
        f.set_len(durable)?;
        if !exists {
            // The new name must survive a crash too before the index names it.
            File::open(self.dir.join("recordings"))?.sync_all()?;
        }
        Ok(Appending {
            file: f,
            hasher: crc32fast::Hasher::new_with_initial_len(crc, durable),
            written: durable,
        })
    }

    /// Makes the file durable, then has the index claim its bytes (the order is the point).
    fn sync(&self, io: &mut Io, id: &str) {
        let Some(a) = io.appending.get(id) else {
            return;
        };
        let (written, crc) = (a.written, a.hasher.clone().finalize());
        let row = {
            let m = lock(&self.meta);
            let Some(v) = m.views.get(id) else { return };
            if v.durable == written && !v.used_dirty {
                return;
            }
            (v.file.clone(), v.content_type.clone(), v.size, v.last_used)
        };
        if let Err(e) = a.file.sync_data() {
            io.appending.remove(id);
            self.disable(id, &format!("fsync: {e}"));
            return;
        }
        let (file, content_type, size, last_used) = row;
        let updated = io.db.execute(
            "INSERT INTO recordings (id, file, content_type, size, stored, crc32, last_used)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(id) DO UPDATE SET content_type = excluded.content_type, size = excluded.size,
                 stored = excluded.stored, crc32 = excluded.crc32, last_used = excluded.last_used",
            params![id, file, content_type, size.map(|s| s as i64), written as i64, crc as i64, last_used],
        );
        if let Err(e) = updated {
            self.disable(id, &format!("index update: {e}"));
            return;
        }
        let mut m = lock(&self.meta);
        if let Some(v) = m.views.get_mut(id) {
            v.durable = written;
            v.crc = crc;
            v.used_dirty = false;
        }
    }

    /// Syncs every file being written, and records when recordings were last used.
    fn sync_all(&self) {
        let mut io = lock(&self.io);
        let ids: Vec<String> = io.appending.keys().cloned().collect();
        for id in ids {
            self.sync(&mut io, &id);
        }
        let used: Vec<(String, i64)> = {
            let mut m = lock(&self.meta);
            m.views
                .iter_mut()
                .filter(|(_, v)| v.used_dirty && v.durable > 0)
                .map(|(id, v)| {
                    v.used_dirty = false;
                    (id.clone(), v.last_used)
                })
                .collect()
        };
        for (id, t) in used {
            let _ = io.db.execute(
                "UPDATE recordings SET last_used = ?2 WHERE id = ?1",
                params![id, t],
            );
        }
    }

    /// Stops writing `id` for the rest of the process, keeping what is durable. Logged once.
    fn disable(&self, id: &str, why: &str) {
        let mut m = lock(&self.meta);
        if m.disabled.insert(id.to_string()) {
            m.stats.write_errors += 1;
            tracing::warn!(recording = %id, "not caching on disk any more: {why}; reading from the network instead");
        }
    }

    /// Evicts least recently used recordings (not `keep`, not leased) until `need` more bytes fit
    /// within the byte cap (and, with `free`, the free space to leave). `false` when they cannot.
    fn make_room(&self, keep: Option<&str>, need: u64, free: bool) -> bool {
        loop {
            let (victim, file) = {
                let m = lock(&self.meta);
                let total: u64 = m.views.values().map(|v| v.written).sum();
                let over_cap = total + need > self.config.max_bytes;
                let short = free
                    && free_space(&self.dir, &self.config)
                        .is_some_and(|(keep, avail)| avail < keep.saturating_add(need));
                if !over_cap && !short {
                    return true;
                }
                let victim = m
                    .views
                    .iter()
                    .filter(|(id, v)| {
                        Some(id.as_str()) != keep && !m.leases.contains_key(*id) && v.written > 0
                    })
                    .min_by_key(|(_, v)| v.last_used)
                    .map(|(id, v)| (id.clone(), v.file.clone()));
                match victim {
                    Some(v) => v,
                    None => return false,
                }
            };
            tracing::debug!(recording = %victim, "evicted from the disk cache");
            self.remove(&victim, &file);
            lock(&self.meta).stats.evicted += 1;
        }
    }

    /// Drops a recording: index row first, then the file (a crash between leaves an unnamed
    /// file, deleted at the next open, never a row without its bytes).
    fn remove(&self, id: &str, file: &str) {
        let mut io = lock(&self.io);
        io.appending.remove(id);
        let _ = io
            .db
            .execute("DELETE FROM recordings WHERE id = ?1", params![id]);
        let _ = std::fs::remove_file(self.recording_path(file));
        drop(io);
        lock(&self.meta).views.remove(id);
    }

    fn discard(&self, id: &str, file: &str, why: &str) {
        tracing::warn!(recording = %id, "cached recording discarded ({why}); it will be fetched again");
        self.remove(id, file);
        lock(&self.meta).stats.discarded += 1;
    }

    fn read(&self, id: &str, offset: u64, len: usize) -> Option<Bytes> {
        {
            let mut m = lock(&self.meta);
            let v = m.views.get_mut(id)?;
            if offset >= v.written {
                return None;
            }
            v.last_used = use_time();
            v.used_dirty = true;
        }
        let (f, io) = self.checked_file(id)?;
        let (file, written) = {
            let m = lock(&self.meta);
            let v = m.views.get(id)?;
            (v.file.clone(), v.written)
        };
        let n = (len as u64).min(written.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; n];
        if let Err(e) = f.read_exact_at(&mut buf, offset) {
            drop(io);
            self.discard(id, &file, &format!("read: {e}"));
            return None;
        }
        drop(io);
        lock(&self.meta).stats.bytes_read += n as u64;
        Some(Bytes::from(buf))
    }

    /// Opens `id`'s file, and checks its claimed bytes against their checksum unless that was
    /// done in this process; a file that cannot be opened or does not match is discarded
    /// (`None`). Returns the file with `io` still held, so a read right after it is not
    /// interleaved with a removal.
    fn checked_file(&self, id: &str) -> Option<(File, MutexGuard<'_, Io>)> {
        let (file, verified, durable, crc) = {
            let m = lock(&self.meta);
            let v = m.views.get(id)?;
            (v.file.clone(), v.verified, v.durable, v.crc)
        };
        let io = lock(&self.io);
        let f = match File::open(self.recording_path(&file)) {
            Ok(f) => f,
            Err(e) => {
                drop(io);
                self.discard(id, &file, &format!("open: {e}"));
                return None;
            }
        };
        if !verified {
            match crc_of(&f, durable) {
                Ok(c) if c == crc => {
                    if let Some(v) = lock(&self.meta).views.get_mut(id) {
                        v.verified = true;
                    }
                }
                Ok(_) => {
                    drop(io);
                    self.discard(id, &file, "checksum mismatch");
                    return None;
                }
                Err(e) => {
                    drop(io);
                    self.discard(id, &file, &format!("read: {e}"));
                    return None;
                }
            }
        }
        Some((f, io))
    }
}

/// Reads one row of the index (tests and diagnostics): `(stored, size, crc32)`.
pub fn index_row(dir: &Path, id: &str) -> anyhow::Result<Option<(u64, Option<u64>, u32)>> {
    let db = Connection::open_with_flags(
        dir.join("index.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    Ok(db
        .query_row(
            "SELECT stored, size, crc32 FROM recordings WHERE id = ?1",
            params![id],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, Option<i64>>(1)?.map(|s| s as u64),
                    r.get::<_, i64>(2)? as u32,
                ))
            },
        )
        .optional()?)
}

/// Whether a process (a running mount) holds the store in `dir` (its `flock`).
pub fn in_use(dir: &Path) -> bool {
    let Ok(f) = File::open(dir.join("lock")) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; the lock, if taken, goes with the descriptor.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// What the index of the store in `dir` holds (read-only: works while a mount uses the
/// directory; the mount's last unsynced bytes are not counted yet). `None` when `dir` holds no
/// index.
pub fn summary(dir: &Path) -> anyhow::Result<Option<Summary>> {
    let index = dir.join("index.sqlite");
    if !index.exists() {
        return Ok(None);
    }
    let db = Connection::open_with_flags(&index, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", index.display()))?;
    let version: i32 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 1 {
        return Ok(Some(Summary::default()));
    }
    let (complete, partial, bytes) = db.query_row(
        "SELECT COALESCE(SUM(size IS NOT NULL AND stored = size), 0),
                COALESCE(SUM(size IS NULL OR stored < size), 0),
                COALESCE(SUM(stored), 0)
         FROM recordings",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        },
    )?;
    Ok(Some(Summary {
        complete: complete as u64,
        partial: partial as u64,
        bytes: bytes as u64,
    }))
}

/// The path of a recording's content file under a store directory (tests and diagnostics).
pub fn content_path(dir: &Path, id: &str) -> PathBuf {
    dir.join("recordings").join(file_name(id))
}

#[cfg(test)]
mod media_tests;
#[cfg(test)]
mod tests;
