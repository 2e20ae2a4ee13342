//! The call index: what a mount learned from the call log, kept beside the recording index so
//! that the next mount lists past dates without a request.
//!
//! Call-log requests are the scarce resource, and a date that has settled never changes, so the
//! records a listing returned and the fact that a span of time was listed completely are worth
//! as much to the next mount as the audio is. The tables (created by step 2 of
//! [`super::disk::migrate`], in the same `index.sqlite`):
//!
//! - `calls`: each record's raw JSON by record id, with its session id and UTC start. Dates are
//!   not stored: the window's time zone may change between mounts (`--tz`), so they are computed
//!   again from the start times.
//! - `listed`: UTC `[from, to)` spans every record of which is in `calls`, with when they were
//!   listed (a span listed before its calls settled is only trusted up to `listed_at - settle`).
//! - `facts`: the call-log scope in use and the account's recording format.
//! - `call_recordings` (step 3): which calls carry which recording, so that a recording id
//!   finds its call without parsing every record.
//!
//! The store knows no ringfs type: records are JSON text, facts are strings; the filesystem core
//! parses them. Writes go through a channel to one writer thread (one transaction per message,
//! so a page is all there or not at all after a crash) and never block the caller. Reads are
//! blocking, each on a read-only connection of its own (so they never wait for the writer): the
//! spans and facts when a mount starts, then the records of one date, session or recording
//! whenever the mount needs them, so that it holds in memory only the dates in use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, params};

use super::disk::migrate;

/// One call-log record to keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCall {
    pub id: String,
    pub session_id: String,
    /// `startTime`, Unix milliseconds.
    pub start_ms: i64,
    /// The record as the API returned it.
    pub json: String,
    /// The ids of the recordings it carries.
    pub recordings: Vec<String>,
}

/// A UTC span `[from_ms, to_ms)` listed completely at `listed_at_ms` (Unix milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub from_ms: i64,
    pub to_ms: i64,
    pub listed_at_ms: i64,
}

/// What a mount reads when it starts (the records are read when needed).
#[derive(Clone, Debug, Default)]
pub struct Stored {
    /// How many records the index holds.
    pub count: u64,
    /// The start of the newest record, Unix milliseconds.
    pub newest_ms: Option<i64>,
    pub spans: Vec<Span>,
    pub facts: HashMap<String, String>,
}

enum Msg {
    /// Records and listed spans of one page, written in one transaction.
    Page {
        calls: Vec<StoredCall>,
        spans: Vec<Span>,
    },
    Fact(String, String),
    /// Forget every record, span and fact (the scope changed).
    Reset,
    /// Answered once everything sent before it is written.
    Flush(mpsc::Sender<()>),
}

/// The call index of one cache directory. See the module docs.
pub struct MetaStore {
    path: PathBuf,
    /// Messages sent, and messages the writer has finished with (see [`MetaStore::written`]).
    sent: AtomicU64,
    done: Arc<AtomicU64>,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStore")
            .field("path", &self.path)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl MetaStore {
    /// Opens the index in `dir` (the directory of a [`super::DiskStore`], whose lock keeps other
    /// processes out; created if missing), drops records and spans older than `keep` before now,
    /// and starts the writer thread. Blocking: call it before serving.
    pub fn open(dir: &Path, keep: Duration) -> anyhow::Result<MetaStore> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("index.sqlite");
        let mut db = Connection::open(&path).context("opening the call index")?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.busy_timeout(Duration::from_secs(5))?;
        migrate(&mut db)?;
        let cutoff = now_ms().saturating_sub(keep.as_millis() as i64);
        let tx = db.transaction()?;
        tx.execute("DELETE FROM calls WHERE start_ms < ?1", params![cutoff])?;
        tx.execute("DELETE FROM listed WHERE to_ms < ?1", params![cutoff])?;
        tx.execute(
            "DELETE FROM call_recordings WHERE start_ms < ?1",
            params![cutoff],
        )?;
        tx.commit()?;
        let (sender, rx) = mpsc::channel();
        let done = Arc::new(AtomicU64::new(0));
        let written = done.clone();
        let thread = std::thread::Builder::new()
            .name("ringfs-meta".into())
            .spawn(move || run(db, rx, &written))
            .context("starting the call index writer")?;
        Ok(MetaStore {
            path,
            sent: AtomicU64::new(0),
            done,
            tx: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// How many calls the index in `dir` holds, read-only (works while a mount has it open);
    /// `None` when there is no index or no call table yet.
    pub fn count(dir: &Path) -> Option<u64> {
        let db = Connection::open_with_flags(
            dir.join("index.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ok()?;
        db.query_row("SELECT COUNT(*) FROM calls", [], |r| r.get::<_, i64>(0))
            .ok()
            .map(|n| n as u64)
    }

    fn reader(&self) -> anyhow::Result<Connection> {
        Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .context("reading the call index")
    }

    /// The spans, the facts and how many records there are. Blocking.
    pub fn load(&self) -> anyhow::Result<Stored> {
        let db = self.reader()?;
        let mut out = Stored::default();
        (out.count, out.newest_ms) =
            db.query_row("SELECT COUNT(*), MAX(start_ms) FROM calls", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })?;
        let mut q = db.prepare("SELECT from_ms, to_ms, listed_at_ms FROM listed")?;
        out.spans = q
            .query_map([], |r| {
                Ok(Span {
                    from_ms: r.get(0)?,
                    to_ms: r.get(1)?,
                    listed_at_ms: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut q = db.prepare("SELECT key, value FROM facts")?;
        out.facts = q
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(out)
    }

    /// The raw JSON of the records that started in `[from_ms, to_ms)`, oldest first. Blocking.
    pub fn calls_between(&self, from_ms: i64, to_ms: i64) -> anyhow::Result<Vec<String>> {
        self.calls_where(
            "SELECT json FROM calls WHERE start_ms >= ?1 AND start_ms < ?2 ORDER BY start_ms, id",
            params![from_ms, to_ms],
        )
    }

    /// The raw JSON of the records of session `id`, oldest first. Blocking.
    pub fn session_calls(&self, id: &str) -> anyhow::Result<Vec<String>> {
        self.calls_where(
            "SELECT json FROM calls WHERE session_id = ?1 ORDER BY start_ms, id",
            params![id],
        )
    }

    /// The raw JSON of the records that carry recording `id`. Blocking.
    pub fn recording_calls(&self, id: &str) -> anyhow::Result<Vec<String>> {
        self.calls_where(
            "SELECT c.json FROM call_recordings r JOIN calls c ON c.id = r.call_id
             WHERE r.recording_id = ?1 ORDER BY c.start_ms, c.id",
            params![id],
        )
    }

    /// The ids of every session with a recording, and of every recording. Blocking.
    pub fn ids(&self) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let db = self.reader()?;
        let column = |sql: &str| -> anyhow::Result<Vec<String>> {
            let mut q = db.prepare(sql)?;
            let rows = q
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        };
        Ok((
            column(
                "SELECT DISTINCT c.session_id FROM call_recordings r JOIN calls c ON c.id = r.call_id",
            )?,
            column("SELECT DISTINCT recording_id FROM call_recordings")?,
        ))
    }

    fn calls_where(&self, sql: &str, args: impl rusqlite::Params) -> anyhow::Result<Vec<String>> {
        let db = self.reader()?;
        let mut q = db.prepare(sql)?;
        let rows = q
            .query_map(args, |r| r.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// How many messages the writer has finished with: what [`MetaStore::record`] returned is
    /// on disk (or failed to be, which the next mount pays for) once this reaches it.
    pub fn written(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    /// Queues the records and listed spans of one page (one transaction); returns the number
    /// [`MetaStore::written`] reaches once they are written. Never blocks.
    pub fn record(&self, calls: Vec<StoredCall>, spans: Vec<Span>) -> u64 {
        if calls.is_empty() && spans.is_empty() {
            return self.written();
        }
        self.send(Msg::Page { calls, spans })
    }

    /// Queues setting one fact. Never blocks.
    pub fn set_fact(&self, key: &str, value: &str) {
        self.send(Msg::Fact(key.into(), value.into()));
    }

    /// Queues forgetting everything held.
    pub fn reset(&self) {
        self.send(Msg::Reset);
    }

    /// Waits until everything queued so far is written. Blocking.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Msg::Flush(tx));
        let _ = rx.recv();
    }

    /// Writes out what is queued and stops the writer; later writes are dropped. Blocking;
    /// called at unmount (and by `Drop`).
    pub fn shutdown(&self) {
        lock(&self.tx).take();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }

    /// Sends `msg` to the writer; returns its number (see [`MetaStore::written`]).
    fn send(&self, msg: Msg) -> u64 {
        let tx = lock(&self.tx);
        let n = self.sent.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(tx) = tx.as_ref() {
            let _ = tx.send(msg);
        }
        n
    }
}

impl Drop for MetaStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The writer thread: one transaction per message until the sender is dropped. A failed write
/// is logged once and costs only what the next mount will list again.
fn run(mut db: Connection, rx: mpsc::Receiver<Msg>, written: &AtomicU64) {
    let mut warned = false;
    for msg in rx {
        let result = match msg {
            Msg::Flush(done) => {
                written.fetch_add(1, Ordering::AcqRel);
                let _ = done.send(());
                continue;
            }
            Msg::Page { calls, spans } => write_page(&mut db, &calls, &spans),
            Msg::Fact(key, value) => db
                .execute(
                    "INSERT OR REPLACE INTO facts (key, value) VALUES (?1, ?2)",
                    params![key, value],
                )
                .map(drop),
            Msg::Reset => db.execute_batch(
                "BEGIN; DELETE FROM calls; DELETE FROM call_recordings; DELETE FROM listed;
                 DELETE FROM facts; COMMIT;",
            ),
        };
        written.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = result
            && !std::mem::replace(&mut warned, true)
        {
            tracing::warn!("cannot write the call index (the next mount lists again): {e}");
        }
    }
}

fn write_page(db: &mut Connection, calls: &[StoredCall], spans: &[Span]) -> rusqlite::Result<()> {
    let tx = db.transaction()?;
    {
        let mut put = tx.prepare_cached(
            "INSERT OR REPLACE INTO calls (id, session_id, start_ms, json) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut carries = tx.prepare_cached(
            "INSERT OR REPLACE INTO call_recordings (recording_id, call_id, start_ms)
             VALUES (?1, ?2, ?3)",
        )?;
        for c in calls {
            put.execute(params![c.id, c.session_id, c.start_ms, c.json])?;
            for r in &c.recordings {
                carries.execute(params![r, c.id, c.start_ms])?;
            }
        }
        // A span listed now supersedes the older spans it contains, so the table stays about one
        // row per date however often today is listed again.
        let mut drop_inside = tx.prepare_cached(
            "DELETE FROM listed WHERE from_ms >= ?1 AND to_ms <= ?2 AND listed_at_ms <= ?3",
        )?;
        let mut add = tx.prepare_cached(
            "INSERT INTO listed (from_ms, to_ms, listed_at_ms) VALUES (?1, ?2, ?3)",
        )?;
        for s in spans {
            drop_inside.execute(params![s.from_ms, s.to_ms, s.listed_at_ms])?;
            add.execute(params![s.from_ms, s.to_ms, s.listed_at_ms])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_facts_survive_a_reopen_and_old_rows_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_ms();
        let day = 86_400_000;
        let m = MetaStore::open(dir.path(), Duration::from_secs(10 * 86_400)).unwrap();
        let call = |id: &str, start_ms| StoredCall {
            id: id.into(),
            session_id: format!("s{id}"),
            start_ms,
            json: format!("{{\"id\":\"{id}\"}}"),
            recordings: vec![format!("r{id}")],
        };
        m.record(
            vec![call("old", now - 20 * day), call("a", now - day)],
            vec![
                Span {
                    from_ms: now - 2 * day,
                    to_ms: now - day,
                    listed_at_ms: now - day,
                },
                Span {
                    from_ms: now - 30 * day,
                    to_ms: now - 29 * day,
                    listed_at_ms: now,
                },
            ],
        );
        // Listed again later: the wider span replaces the one inside it.
        m.record(
            vec![call("a", now - day)],
            vec![Span {
                from_ms: now - 2 * day,
                to_ms: now,
                listed_at_ms: now,
            }],
        );
        m.set_fact("scope", "extension");
        m.shutdown();
        drop(m);
        let m = MetaStore::open(dir.path(), Duration::from_secs(10 * 86_400)).unwrap();
        let s = m.load().unwrap();
        assert_eq!((s.count, s.newest_ms), (1, Some(now - day)));
        let a = vec!["{\"id\":\"a\"}".to_string()];
        assert_eq!(m.calls_between(now - 2 * day, now).unwrap(), a);
        assert!(
            m.calls_between(now - 2 * day, now - day)
                .unwrap()
                .is_empty()
        );
        assert_eq!(m.session_calls("sa").unwrap(), a);
        assert_eq!(m.recording_calls("ra").unwrap(), a);
        assert!(
            m.recording_calls("rold").unwrap().is_empty(),
            "dropped with its call"
        );
        assert_eq!(
            m.ids().unwrap(),
            (vec!["sa".to_string()], vec!["ra".to_string()])
        );
        assert_eq!(
            s.spans,
            vec![Span {
                from_ms: now - 2 * day,
                to_ms: now,
                listed_at_ms: now
            }]
        );
        assert_eq!(s.facts["scope"], "extension");
        m.reset();
        m.flush();
        let s = m.load().unwrap();
        assert!(s.count == 0 && s.spans.is_empty() && s.facts.is_empty());
        assert!(m.recording_calls("ra").unwrap().is_empty());
    }

    #[test]
    fn an_index_of_version_2_finds_its_calls_by_recording_after_the_migration() {
        let dir = tempfile::tempdir().unwrap();
        let keep = Duration::from_secs(10 * 86_400);
        let json = r#"{"id":"L1","recording":{"id":"r1"},"legs":[{"recording":{"id":22}}]}"#;
        let m = MetaStore::open(dir.path(), keep).unwrap();
        m.record(
            vec![StoredCall {
                id: "L1".into(),
                session_id: "s1".into(),
                start_ms: now_ms(),
                json: json.into(),
                recordings: Vec::new(),
            }],
            Vec::new(),
        );
        m.shutdown();
        drop(m);
        // Back to what step 2 left.
        let db = Connection::open(dir.path().join("index.sqlite")).unwrap();
        db.execute_batch(
            "DROP TABLE call_recordings; DROP INDEX calls_by_session; PRAGMA user_version = 2;",
        )
        .unwrap();
        drop(db);
        let m = MetaStore::open(dir.path(), keep).unwrap();
        assert_eq!(m.recording_calls("r1").unwrap(), vec![json.to_string()]);
        assert_eq!(m.recording_calls("22").unwrap(), vec![json.to_string()]);
        assert_eq!(m.session_calls("s1").unwrap(), vec![json.to_string()]);
    }
}
