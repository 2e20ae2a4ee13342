//! The filesystem core without a kernel: [`Fs`] driven directly, over a scripted call log
//! ([`scripted::ScriptedLog`], optionally behind the failure-injecting [`faulty::Faulty`]) and
//! the media layer over [`FakeSource`]. Every test counts the call-log queries it causes, so
//! the costs the module docs of `ringfs::fs` promise are asserted here in milliseconds, and the
//! timeouts run under paused tokio time.
//!
//! Each test prints its figures (`[core] ...`); `cargo test --test core -- --nocapture` shows
//! them.

// The helpers only this binary uses live beside it (`tests/core/`), not in `tests/common/`,
// which every test binary compiles.
#[path = "core/faulty.rs"]
mod faulty;
#[path = "core/live.rs"]
mod live;
#[path = "core/scripted.rs"]
mod scripted;

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};
use ringfs::api::Scope;
use ringfs::catalog::Window;
use ringfs::fs::{Attr, DirEntry, Fs, FsConfig, FsError, Kind, ScopeChoice};
use ringfs::media::fake::{FakeRecording, FakeSource, expected};
use ringfs::media::{Media, MediaConfig};
use ringfs::store::MetaStore;

use faulty::{Faulty, Outcome};
use scripted::{Call, PAGE, QueryKind, ScriptedLog, calls_back_from};

const ROOT: u64 = 1;
/// Dates the test window shows (today and the nine before).
const DAYS: u32 = 10;

// ------------------------------------------------------------------ harness

/// One core over a scripted log and a fake media host.
struct Core {
    fs: Arc<Fs>,
    /// The scripted log: the queries that reached it.
    log: Arc<ScriptedLog>,
    /// The wrapper in front of it: every call, with the outcome it got.
    faults: Arc<Faulty>,
    media: Arc<FakeSource>,
}

fn core(log: ScriptedLog, tune: impl FnOnce(&mut FsConfig)) -> Core {
    core_over(log, tune, None)
}

/// A core that keeps what it learns in (and starts from) the call index `meta`, when given.
fn core_over(
    log: ScriptedLog,
    tune: impl FnOnce(&mut FsConfig),
    meta: Option<Arc<MetaStore>>,
) -> Core {
    let log = Arc::new(log);
    let faults = Arc::new(Faulty::new(log.clone()));
    let media = Arc::new(FakeSource::new());
    let mut config = FsConfig::new(Window::last_days(DAYS, TimeZone::UTC));
    tune(&mut config);
    let media_layer = Media::new(media.clone(), MediaConfig::default());
    let fs = match meta {
        Some(meta) => Fs::with_index(faults.clone(), media_layer, config, meta),
        None => Fs::new(faults.clone(), media_layer, config),
    };
    Core {
        fs: Arc::new(fs),
        log,
        faults,
        media,
    }
}

impl Core {
    /// Looks `path` up from the root, one component at a time (`""` is the root).
    async fn lookup(&self, path: &str) -> Result<Attr, FsError> {
        let mut attr = self.fs.getattr(ROOT).await?;
        for name in path.split('/').filter(|n| !n.is_empty()) {
            attr = self.fs.lookup(attr.ino, OsStr::new(name)).await?;
        }
        Ok(attr)
    }

    /// The entries of the directory at `path`, without a date's `calls.csv` (so that a date's
    /// entries are its sessions; `calls_csv_*` tests look at that file).
    async fn list(&self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let attr = self.lookup(path).await?;
        Ok(without_csv(self.fs.opendir(attr.ino).await?))
    }

    /// Call-log pages answered so far.
    fn pages(&self) -> usize {
        self.log.pages().len()
    }

    /// Calls of any kind that reached the wrapper, failed or not.
    fn calls(&self) -> usize {
        self.faults.seen().len()
    }

    /// The whole content of the file at `path`, read through `open`/`read`/`release` in pieces
    /// of `piece` bytes.
    async fn read_all(&self, path: &str, piece: u32) -> Result<Vec<u8>, FsError> {
        let attr = self.lookup(path).await?;
        let opened = self.fs.open(attr.ino, false).await?;
        let mut out = Vec::new();
        let result = loop {
            match self
                .fs
                .read(attr.ino, opened.fh, out.len() as u64, piece)
                .await
            {
                Ok(b) if b.is_empty() => break Ok(out),
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => break Err(e),
            }
        };
        self.fs.release(opened.fh);
        result
    }
}

fn without_csv(mut entries: Vec<DirEntry>) -> Vec<DirEntry> {
    entries.retain(|e| e.name != "calls.csv");
    entries
}

fn names(entries: &[DirEntry]) -> Vec<String> {
    entries.iter().map(|e| e.name.clone()).collect()
}

fn today() -> Date {
    Timestamp::now().to_zoned_datetime(TimeZone::UTC).date()
}

fn days_ago(n: i64) -> Date {
    today().checked_sub(n.days()).unwrap()
}

fn date_of(t: Timestamp) -> Date {
    t.to_zoned_datetime(TimeZone::UTC).date()
}

/// The call sessions of `calls` that start on `d`.
fn sessions_on(calls: &[Call], d: Date) -> usize {
    calls.iter().filter(|c| date_of(c.start) == d).count()
}

fn midnight(d: Date) -> Timestamp {
    d.to_zoned_datetime(TimeZone::UTC).unwrap().timestamp()
}

fn at(d: Date, hms: &str) -> Timestamp {
    let t: jiff::civil::Time = hms.parse().unwrap();
    d.to_datetime(t)
        .to_zoned_datetime(TimeZone::UTC)
        .unwrap()
        .timestamp()
}

/// A few calls on every past date of the window but `except`, so queries have neighbours.
fn background(except: Date) -> Vec<Call> {
    let mut out = Vec::new();
    for n in 1..i64::from(DAYS) {
        let d = days_ago(n);
        if d != except {
            let base = at(d, "12:00:00");
            out.extend(calls_back_from(
                base,
                5,
                600,
                9_000_000_000 + n as u64 * 100,
                90_000_000 + n as u64 * 100,
            ));
        }
    }
    out
}

/// `n` calls on date `d`, one every `step` seconds back from 23:59:00.
fn crowded(d: Date, n: usize, step: i64) -> Vec<Call> {
    assert!(n as i64 * step < 86_400, "the calls fit in the date");
    calls_back_from(at(d, "23:59:00"), n, step, 6_000_000_000, 60_000_000)
}

fn errno(r: &Result<impl Sized, FsError>) -> Option<i32> {
    r.as_ref().err().map(FsError::to_errno)
}

// ------------------------------------------------------------------ listing costs

#[tokio::test]
async fn a_date_of_2500_recordings_costs_3_pages() {
    let d = days_ago(3);
    let mut calls = crowded(d, 2500, 30);
    calls.extend(background(d));
    let c = core(ScriptedLog::new(&calls), |_| {});
    let listed = c.list(&d.to_string()).await.unwrap();
    assert_eq!(listed.len(), 2500);
    let pages = c.log.pages();
    let continued: Vec<bool> = pages.iter().map(|q| q.next.is_some()).collect();
    assert_eq!(
        continued,
        [false, true, true],
        "one query, continued twice: {pages:?}"
    );
    assert_eq!(
        pages[0].to,
        Some(midnight(d.tomorrow().unwrap())),
        "the span ends with the date"
    );
    // Listed: the second listing, and the dates the query covered on the way, are free.
    c.list(&d.to_string()).await.unwrap();
    c.list(&days_ago(4).to_string()).await.unwrap();
    assert_eq!(c.pages(), 3);
    eprintln!("[core] a date of 2500 recordings: {} pages", c.pages());
}

#[tokio::test]
async fn a_full_walk_newest_first_costs_ceil_n_over_1000_pages() {
    // N calls spread over the ten dates, the newest a minute ago.
    let n = 4321;
    let newest = Timestamp::now() - SignedDuration::from_secs(60);
    let step = (i64::from(DAYS - 1) * 86_400 - 120) / n as i64;
    let c = core(
        ScriptedLog::new(&calls_back_from(newest, n, step, 5_000_000_000, 50_000_000)),
        |_| {},
    );
    let root = c.fs.opendir(ROOT).await.unwrap();
    let root_names = names(&root);
    let dates: Vec<String> = (0..i64::from(DAYS))
        .map(|i| days_ago(i).to_string())
        .collect();
    assert_eq!(&root_names[..dates.len()], &dates[..], "dates newest first");
    assert_eq!(&root_names[dates.len()..], ["by-session", "by-recording"]);
    assert_eq!(c.pages(), 0, "the root is local");
    // What `find` or `cp -r` do: every directory in readdir order, depth first.
    let mut recordings = 0;
    for date in &dates {
        for session in c.list(date).await.unwrap() {
            let files = c.list(&format!("{date}/{}", session.name)).await.unwrap();
            recordings += files.iter().filter(|f| f.name.ends_with(".mp3")).count();
        }
    }
    assert_eq!(recordings, n);
    let want = n.div_ceil(PAGE);
    eprintln!(
        "[core] a walk of {n} recordings newest first: {} pages (ceil(N/1000) = {want})",
        c.pages()
    );
    assert_eq!(c.pages(), want, "{:?}", c.log.pages());
    assert!(
        c.log.pages()[1..].iter().all(|q| q.next.is_some()),
        "one query, continued"
    );
}

/// `n` calls spread evenly from `hours` before the end of the window's first date to a minute
/// ago, so the first date holds calls only in its last `hours` whatever the time of day.
fn calls_from_the_first_date(n: usize, hours: i64) -> Vec<Call> {
    let newest = Timestamp::now() - SignedDuration::from_secs(60);
    let oldest = midnight(days_ago(i64::from(DAYS) - 2)) - SignedDuration::from_hours(hours);
    let step = newest.duration_since(oldest).as_secs() / n as i64;
    calls_back_from(newest, n, step, 5_000_000_000, 50_000_000)
}

/// Lists every date of the window oldest first, as `ls -R` does (it sorts by name, against the
/// call log's order), and returns the recordings found.
async fn walk_oldest_first(c: &Core) -> usize {
    let mut recordings = 0;
    for i in (0..i64::from(DAYS)).rev() {
        recordings += c.list(&days_ago(i).to_string()).await.unwrap().len();
    }
    recordings
}

#[tokio::test]
async fn a_walk_in_name_order_stays_cheap() {
    let n = 4321;
    let c = core(ScriptedLog::new(&calls_from_the_first_date(n, 24)), |_| {});
    assert_eq!(walk_oldest_first(&c).await, n);
    // Each span ends with the date asked for and reaches forward over newer dates while it is
    // expected to hold under half a page: never more than one query per date, and fewer where
    // calls are sparse.
    let pages = c.pages();
    eprintln!(
        "[core] a walk of {n} recordings oldest first: {pages} pages (newest first: {})",
        n.div_ceil(PAGE)
    );
    assert!(pages <= DAYS as usize, "{pages} pages: {:?}", c.log.pages());
    assert!(
        c.log.pages().iter().all(|q| q.next.is_none()),
        "every date on the first page of its query: {:?}",
        c.log.pages()
    );
}

#[tokio::test]
async fn a_thin_first_date_misleads_one_span_at_most() {
    // The first date listed holds calls only in its last 6 hours, a quarter of the others: the
    // first estimate of the density is 4 times too low and the span after it overflows a page.
    // The estimate takes that page in, and the spans after it fit.
    let n = 4321;
    let c = core(ScriptedLog::new(&calls_from_the_first_date(n, 6)), |_| {});
    assert_eq!(walk_oldest_first(&c).await, n);
    let continued = c.log.pages().iter().filter(|q| q.next.is_some()).count();
    eprintln!(
        "[core] a walk oldest first from a thin date: {} pages, {continued} continued",
        c.pages()
    );
    assert!(continued <= 1, "{continued} continued: {:?}", c.log.pages());
    assert!(c.pages() <= DAYS as usize, "{:?}", c.log.pages());
}

// ------------------------------------------------------------------ scope

#[tokio::test]
async fn a_403_on_the_account_call_log_switches_to_the_extension_once() {
    let d = days_ago(5);
    let mut calls = background(d);
    calls.push(Call::new("1234567890", at(d, "10:00:00"), "44444444"));
    let c = core(ScriptedLog::new(&calls), |_| {});
    c.faults
        .always(|q| q.scope == Some(Scope::Account), Outcome::Forbidden);
    // A listing, a newer date (a new query), a session lookup.
    assert_eq!(c.list(&d.to_string()).await.unwrap().len(), 1);
    assert_eq!(c.list(&days_ago(2).to_string()).await.unwrap().len(), 5);
    c.lookup("by-session/5").await.unwrap_err();
    let account = c
        .faults
        .seen()
        .iter()
        .filter(|(q, _)| q.scope == Some(Scope::Account))
        .count();
    assert_eq!(
        account,
        1,
        "the account was asked once: {:?}",
        c.faults.seen()
    );
    let answered = c.log.queries();
    assert!(
        answered.iter().all(|q| q.scope == Some(Scope::Extension)),
        "{answered:?}"
    );
    assert!(answered.iter().any(|q| q.kind == QueryKind::FindSession));
    eprintln!(
        "[core] 403 then the extension: {} calls, {account} to the account",
        c.calls()
    );
}

#[tokio::test]
async fn a_403_on_a_session_lookup_switches_too() {
    let d = days_ago(5);
    let mut calls = background(d);
    calls.push(Call::new("1234567890", at(d, "10:00:00"), "44444444"));
    let c = core(ScriptedLog::new(&calls), |_| {});
    c.faults
        .always(|q| q.scope == Some(Scope::Account), Outcome::Forbidden);
    assert_eq!(
        c.list("by-session/1234567890").await.unwrap().len(),
        2,
        "the recording and call.json"
    );
    assert_eq!(c.list(&d.to_string()).await.unwrap().len(), 1);
    let account = c
        .faults
        .seen()
        .iter()
        .filter(|(q, _)| q.scope == Some(Scope::Account))
        .count();
    assert_eq!(account, 1, "{:?}", c.faults.seen());
    assert!(
        c.log
            .queries()
            .iter()
            .all(|q| q.scope == Some(Scope::Extension))
    );
}

#[tokio::test]
async fn a_fixed_account_scope_fails_on_403_instead_of_switching() {
    let d = days_ago(5);
    let c = core(ScriptedLog::new(&background(d)), |fc| {
        fc.scope = ScopeChoice::Fixed(Scope::Account)
    });
    c.faults
        .always(|q| q.scope == Some(Scope::Account), Outcome::Forbidden);
    let r = c.list(&days_ago(2).to_string()).await;
    assert_eq!(errno(&r), Some(libc::EIO), "{r:?}");
    assert!(
        c.log.queries().is_empty(),
        "never the extension: {:?}",
        c.log.queries()
    );
}

// ------------------------------------------------------------------ failures and timeouts

#[tokio::test(start_paused = true)]
async fn a_hung_call_log_fails_listings_after_the_read_timeout() {
    let timeout = Duration::from_secs(5);
    let c = core(ScriptedLog::new(&background(days_ago(0))), |fc| {
        fc.read_timeout = timeout
    });
    c.faults
        .always(|q| q.kind == QueryKind::Page, Outcome::Hang);
    let (a, b) = (
        c.lookup(&days_ago(2).to_string()).await.unwrap(),
        c.lookup(&days_ago(6).to_string()).await.unwrap(),
    );
    let t = tokio::time::Instant::now();
    // The second listing waits behind the first's lock, bounded all the same.
    let (ra, rb) = tokio::join!(c.fs.opendir(a.ino), c.fs.opendir(b.ino));
    let took = t.elapsed();
    assert!(matches!(ra, Err(FsError::TimedOut)), "{ra:?}");
    assert_eq!(errno(&ra), Some(libc::EIO));
    assert_eq!(errno(&rb), Some(libc::EIO), "{rb:?}");
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(100),
        "{took:?}"
    );
    // The listing recovers once the log answers; nothing half-listed is taken for listed.
    c.faults.clear_rules();
    assert_eq!(without_csv(c.fs.opendir(a.ino).await.unwrap()).len(), 5);
    assert_eq!(without_csv(c.fs.opendir(b.ino).await.unwrap()).len(), 5);
    eprintln!(
        "[core] hung log: two listings failed after {took:?} (read timeout {timeout:?}); {} calls",
        c.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_page_released_before_the_read_timeout_succeeds() {
    let timeout = Duration::from_secs(5);
    let c = core(ScriptedLog::new(&background(days_ago(0))), |fc| {
        fc.read_timeout = timeout
    });
    c.faults.script([Outcome::Hang]);
    let a = c.lookup(&days_ago(2).to_string()).await.unwrap();
    let t = tokio::time::Instant::now();
    let release = async {
        tokio::time::sleep(timeout - Duration::from_secs(1)).await;
        c.faults.release();
    };
    let (r, ()) = tokio::join!(c.fs.opendir(a.ino), release);
    assert_eq!(without_csv(r.unwrap()).len(), 5);
    assert_eq!(t.elapsed(), timeout - Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_date_listed_slower_than_the_read_timeout_succeeds_while_pages_flow() {
    let timeout = Duration::from_secs(2);
    let d = days_ago(2);
    let mut calls = crowded(d, 4500, 15);
    calls.extend(background(d));
    for (delay, ok) in [
        (Duration::from_millis(1500), true),
        (Duration::from_millis(2500), false),
    ] {
        let c = core(ScriptedLog::new(&calls), |fc| fc.read_timeout = timeout);
        c.faults
            .always(|q| q.kind == QueryKind::Page, Outcome::Delay(delay));
        let t = tokio::time::Instant::now();
        let r = c.list(&d.to_string()).await;
        let took = t.elapsed();
        eprintln!(
            "[core] pages every {delay:?}, read timeout {timeout:?}: {} after {took:?}, {} pages",
            if r.is_ok() { "listed" } else { "failed" },
            c.pages()
        );
        if ok {
            assert_eq!(r.unwrap().len(), 4500);
            assert_eq!(c.pages(), 5);
            assert!(
                took > 2 * timeout,
                "the listing outlasts the timeout: {took:?}"
            );
        } else {
            assert!(
                matches!(r, Err(FsError::TimedOut)),
                "a page slower than the timeout fails: {r:?}"
            );
            assert_eq!(took, timeout);
        }
    }
}

#[tokio::test]
async fn a_5xx_fails_the_listing_and_the_next_one_starts_over() {
    let d = days_ago(3);
    let mut calls = crowded(d, 2500, 30);
    calls.extend(background(d));
    let c = core(ScriptedLog::new(&calls), |_| {});
    // The first page comes, the second fails.
    c.faults.script([Outcome::Pass, Outcome::ServerError(503)]);
    let r = c.list(&d.to_string()).await;
    assert!(matches!(r, Err(FsError::Api { .. })), "{r:?}");
    assert_eq!(errno(&r), Some(libc::EIO));
    let before = c.pages();
    // A failed continuation drops the cursor: the retry is a new query, and completes.
    assert_eq!(c.list(&d.to_string()).await.unwrap().len(), 2500);
    let retry = &c.log.pages()[before..];
    assert!(retry[0].next.is_none(), "{retry:?}");
    assert_eq!(retry.len(), 3, "{retry:?}");
    eprintln!(
        "[core] 503 on page 2: {} calls, {} pages answered",
        c.calls(),
        c.pages()
    );
}

// ------------------------------------------------------------------ by-session, by-recording

#[tokio::test]
async fn by_session_lookups_cost_one_query_and_unknown_ids_are_remembered() {
    let d = days_ago(4);
    let mut calls = background(d);
    calls.push(Call::new("1234567890", at(d, "10:00:00"), "44444444"));
    calls.push(Call {
        recordings: vec![],
        ..Call::new("2345678901", at(d, "11:00:00"), "x")
    });
    let c = core(ScriptedLog::new(&calls), |_| {});
    let found = c.lookup("by-session/1234567890").await.unwrap();
    assert_eq!(found.kind, Kind::Dir);
    assert_eq!(c.calls(), 1);
    let q = &c.log.queries()[0];
    assert_eq!(
        (q.kind, q.id.as_deref()),
        (QueryKind::FindSession, Some("1234567890"))
    );
    c.lookup("by-session/1234567890").await.unwrap();
    let files = names(&c.list("by-session/1234567890").await.unwrap());
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(c.calls(), 1, "known now: free");
    for unknown in ["99999999", "2345678901"] {
        let before = c.calls();
        assert!(matches!(
            c.lookup(&format!("by-session/{unknown}")).await,
            Err(FsError::NotFound)
        ));
        assert_eq!(c.calls(), before + 1, "{unknown}: one query");
        assert!(matches!(
            c.lookup(&format!("by-session/{unknown}")).await,
            Err(FsError::NotFound)
        ));
        assert_eq!(c.calls(), before + 1, "{unknown}: remembered as absent");
    }
    assert!(matches!(
        c.lookup("by-session/not a session").await,
        Err(FsError::NotFound)
    ));
    assert_eq!(c.calls(), 3, "an implausible id costs nothing");
    // A 404 from the call log means absent too; a 5xx is not remembered, and the next lookup asks.
    c.faults
        .script([Outcome::NotFound, Outcome::ServerError(502)]);
    for _ in 0..2 {
        assert!(matches!(
            c.lookup("by-session/77777777").await,
            Err(FsError::NotFound)
        ));
    }
    assert_eq!(c.calls(), 4);
    let r = c.lookup("by-session/88888888").await;
    assert_eq!(errno(&r), Some(libc::EIO), "{r:?}");
    let r = c.lookup("by-session/88888888").await;
    assert!(matches!(r, Err(FsError::NotFound)), "asked again: {r:?}");
    assert_eq!(c.calls(), 6);
    // by-session lists the sessions known so far.
    assert_eq!(names(&c.list("by-session").await.unwrap()), ["1234567890"]);
    assert_eq!(c.pages(), 0);
}

#[tokio::test]
async fn by_recording_lookups_cost_one_query_and_unknown_ids_are_remembered() {
    let d = days_ago(4);
    let mut calls = background(d);
    calls.push(Call::new("1234567890", at(d, "10:00:00"), "44444444"));
    // Without a media host to build URLs from: the metadata endpoint, one request per id.
    let c = core(ScriptedLog::new(&calls).without_media_host(), |_| {});
    let found = c.lookup("by-recording/44444444.mp3").await.unwrap();
    assert_eq!(found.kind, Kind::File);
    let q = c.log.queries();
    assert_eq!(q.len(), 1);
    assert_eq!(
        (q[0].kind, q[0].id.as_deref()),
        (QueryKind::RecordingMeta, Some("44444444"))
    );
    assert_eq!(
        c.lookup("by-recording/44444444.wav").await.unwrap().ino,
        found.ino,
        "either extension"
    );
    assert_eq!(c.calls(), 1);
    for _ in 0..2 {
        assert!(matches!(
            c.lookup("by-recording/55555555.mp3").await,
            Err(FsError::NotFound)
        ));
    }
    assert_eq!(
        c.calls(),
        2,
        "the unknown id costs one query, then is remembered"
    );
    for odd in [
        "44444444.ogg",
        "44444444",
        "2026-01-01 10-00-00 in x 44444444.mp3",
    ] {
        assert!(
            matches!(
                c.lookup(&format!("by-recording/{odd}")).await,
                Err(FsError::NotFound)
            ),
            "{odd}"
        );
    }
    assert_eq!(
        c.calls(),
        2,
        "names that cannot be a recording cost nothing"
    );
    assert_eq!(
        names(&c.list("by-recording").await.unwrap()),
        ["44444444.mp3"]
    );
    assert!(c.media.opens().is_empty());

    // With a media host: the URL built from the id is opened (the download a read would use);
    // the call log only when the media host says 404.
    let c = core(ScriptedLog::new(&calls), |_| {});
    c.media.add("44444444", FakeRecording::new(1000, 1));
    c.lookup("by-recording/44444444.mp3").await.unwrap();
    assert_eq!(c.calls(), 0);
    assert_eq!(c.media.opens().len(), 1);
    for _ in 0..2 {
        assert!(matches!(
            c.lookup("by-recording/55555555.mp3").await,
            Err(FsError::NotFound)
        ));
    }
    assert_eq!(
        (c.calls(), c.media.opens().len()),
        (1, 2),
        "one media open and one query, then remembered"
    );
}

// ------------------------------------------------------------------ names and content

#[tokio::test]
async fn session_directories_and_files_are_named_as_the_catalog_makes_them() {
    let d = days_ago(2);
    let inbound = Call {
        name: Some("John Smith".into()),
        number: Some("+14155550100".into()),
        ..Call::new("1234567890", at(d, "14:05:12"), "44444444")
    };
    let outbound = Call {
        inbound: false,
        number: None,
        ext: Some("205".into()),
        ..Call::new("2345678901", at(d, "09:00:00"), "44444445")
    };
    // A transfer: two records of one session, each with its recording.
    let jane = |id: &str, t: &str, rec: &str| Call {
        id: id.into(),
        number: Some("+16505550100".into()),
        name: Some("Jane Doe".into()),
        ..Call::new("3456789012", at(d, t), rec)
    };
    let transfer = [
        jane("La", "16:00:00", "44444446"),
        jane("Lb", "16:03:00", "44444447"),
    ];
    let unrecorded = Call {
        recordings: vec![],
        ..Call::new("4567890123", at(d, "10:00:00"), "x")
    };
    let hostile = Call {
        name: Some("Evil/../x:\u{202e}gpj".into()),
        ..Call::new("5678901234", at(d, "18:00:00"), "44444448")
    };
    let mut calls = vec![inbound.clone(), outbound, unrecorded, hostile];
    calls.extend(transfer.clone());
    let c = core(ScriptedLog::new(&calls), |_| {});
    let day = d.to_string();
    let sessions = c.list(&day).await.unwrap();
    assert_eq!(
        names(&sessions),
        [
            "09-00-00 out ext 205 2345678901",
            "14-05-12 in +14155550100 John Smith 1234567890",
            "16-00-00 in +16505550100 Jane Doe 3456789012",
            "18-00-00 in +15558901234 Evil-..-x-gpj 5678901234",
        ]
    );
    assert!(sessions.iter().all(|s| s.kind == Kind::Dir));
    let dir = format!("{day}/14-05-12 in +14155550100 John Smith 1234567890");
    assert_eq!(
        names(&c.list(&dir).await.unwrap()),
        [
            format!("{day} 14-05-12 in +14155550100 John Smith 44444444.mp3"),
            "call.json".into()
        ]
    );
    let dir = format!("{day}/16-00-00 in +16505550100 Jane Doe 3456789012");
    let files = names(&c.list(&dir).await.unwrap());
    assert_eq!(
        files,
        [
            format!("{day} 16-00-00 in +16505550100 Jane Doe 44444446.mp3"),
            format!("{day} 16-03-00 in +16505550100 Jane Doe 44444447.mp3"),
            "call.json".into()
        ],
        "each recording named after its own record"
    );
    // A name the kernel may still hold with the other extension finds the same file.
    let mp3 = c.lookup(&format!("{dir}/{}", files[0])).await.unwrap();
    let wav = c
        .lookup(&format!("{dir}/{}", files[0].replace(".mp3", ".wav")))
        .await
        .unwrap();
    assert_eq!(mp3.ino, wav.ino);
    // Names that only look like a session of the date are refused.
    for wrong in [
        "14-05-12 in +14155550100 John Smith 2345678901",
        "14-05-12 in 1234567890",
        "10-00-00 in +15557890123 4567890123",
    ] {
        assert!(
            matches!(
                c.lookup(&format!("{day}/{wrong}")).await,
                Err(FsError::NotFound)
            ),
            "{wrong}"
        );
    }
    // call.json: the record as the API returned it; an array for a session of several.
    let one: serde_json::Value = serde_json::from_slice(
        &c.read_all(
            &format!("{day}/14-05-12 in +14155550100 John Smith 1234567890/call.json"),
            100,
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(one, inbound.json());
    let json = c.read_all(&format!("{dir}/call.json"), 4096).await.unwrap();
    let two: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        two,
        serde_json::Value::Array(transfer.iter().map(Call::json).collect())
    );
    assert_eq!(
        c.lookup(&format!("{dir}/call.json")).await.unwrap().size,
        json.len() as u64
    );
    assert_eq!(c.pages(), 1);
}

#[tokio::test]
async fn reading_a_recording_returns_the_fake_bytes() {
    let d = days_ago(2);
    let len = 300_001; // more than one 256 KiB chunk, not a multiple of anything
    let seed = 7;
    let c = core(
        ScriptedLog::new(&[Call::new("1234567890", at(d, "10:00:00"), "44444444")]),
        |_| {},
    );
    c.media.add("44444444", FakeRecording::new(len, seed));
    let session = format!("{d}/{}", c.list(&d.to_string()).await.unwrap()[0].name);
    let file = format!("{session}/{}", c.list(&session).await.unwrap()[0].name);
    let before = c.lookup(&file).await.unwrap();
    assert_eq!(
        (before.size, before.attr_ttl),
        (60 * 4000, Duration::ZERO),
        "an estimate from the duration, not cached"
    );
    assert!(c.media.opens().is_empty(), "listing and stat open nothing");

    let opened = c.fs.open(before.ino, false).await.unwrap();
    assert!(opened.keep_cache && !opened.direct_io, "{opened:?}");
    let after = c.fs.getattr(before.ino).await.unwrap();
    assert_eq!(after.size, len, "exact once the media host told it");
    let mut got = Vec::new();
    loop {
        let b =
            c.fs.read(before.ino, opened.fh, got.len() as u64, 65_536)
                .await
                .unwrap();
        if b.is_empty() {
            break;
        }
        got.extend_from_slice(&b);
    }
    assert!(
        got == expected(seed, 0, len),
        "{} bytes, want {len}",
        got.len()
    );
    let middle =
        c.fs.read(before.ino, opened.fh, 123_456, 1000)
            .await
            .unwrap();
    assert!(middle[..] == expected(seed, 123_456, 1000)[..]);
    assert!(
        c.fs.read(before.ino, opened.fh, len + 10, 100)
            .await
            .unwrap()
            .is_empty(),
        "past the end"
    );
    c.fs.release(opened.fh);
    let stale = c.fs.read(before.ino, opened.fh, 0, 100).await;
    assert_eq!(errno(&stale), Some(libc::EBADF), "{stale:?}");
    assert_eq!(errno(&c.fs.open(before.ino, true).await), Some(libc::EROFS));
    let opens = c.media.opens();
    assert_eq!(
        opens,
        [("44444444".to_string(), 0)],
        "one request for a whole sequential read"
    );

    // The same recording through by-recording.
    assert!(
        c.read_all("by-recording/44444444.mp3", 50_000)
            .await
            .unwrap()
            == expected(seed, 0, len)
    );
    eprintln!(
        "[core] {len} bytes read exactly; media requests {:?}, call-log calls {}",
        c.media.opens(),
        c.calls()
    );
    assert_eq!(c.calls(), 1);
}

#[tokio::test]
async fn desktop_probes_and_impossible_names_cost_nothing() {
    let d = days_ago(2);
    let c = core(
        ScriptedLog::new(&[Call::new("1234567890", at(d, "10:00:00"), "44444444")]),
        |_| {},
    );
    let day = d.to_string();
    let probes = [
        ".DS_Store",
        "._2026-01-01",
        ".Trash-0",
        ".Trashes",
        ".hidden",
        "autorun.inf",
        "desktop.ini",
        ".xdg-volume-info",
        "Thumbs.db",
        ".git",
    ];
    for dir in ["", day.as_str(), "by-session", "by-recording"] {
        for p in probes {
            let r = c.lookup(&format!("{dir}/{p}")).await;
            assert!(matches!(r, Err(FsError::NotFound)), "{dir}/{p}: {r:?}");
        }
    }
    for odd in [
        "2026-13-01",
        "2000-01-01",
        "1999-12-31",
        "today",
        &days_ago(i64::from(DAYS)).to_string(),
    ] {
        assert!(
            matches!(c.lookup(odd).await, Err(FsError::NotFound)),
            "{odd}"
        );
    }
    // In a date, only `HH-MM-SS ...` can be a session: anything else is refused unlisted.
    for odd in [
        "folder",
        "10-00-00",
        "1234567890",
        "10:00:00 in x 1234567890",
    ] {
        assert!(
            matches!(
                c.lookup(&format!("{day}/{odd}")).await,
                Err(FsError::NotFound)
            ),
            "{odd}"
        );
    }
    assert_eq!(c.calls(), 0, "{:?}", c.faults.seen());
    assert!(c.media.opens().is_empty());
    // The date lists once, and probes inside its session stay free.
    let session = format!("{day}/{}", c.list(&day).await.unwrap()[0].name);
    for p in probes {
        assert!(
            matches!(
                c.lookup(&format!("{session}/{p}")).await,
                Err(FsError::NotFound)
            ),
            "{p}"
        );
    }
    assert_eq!(c.calls(), 1);
    eprintln!(
        "[core] probes and impossible names: {} call-log calls, the date's listing",
        c.calls()
    );
}

#[tokio::test]
async fn attributes_follow_the_configuration() {
    let c = core(ScriptedLog::new(&[]), |fc| {
        fc.uid = 1234;
        fc.gid = 5678;
    });
    let root = c.fs.getattr(ROOT).await.unwrap();
    assert_eq!(
        (root.kind, root.perm, root.uid, root.gid),
        (Kind::Dir, 0o500, 1234, 5678)
    );
    let past = c.lookup(&days_ago(3).to_string()).await.unwrap();
    assert_eq!(
        past.attr_ttl,
        c.fs.config().stable_ttl,
        "a past date never changes"
    );
    let today = c.lookup(&days_ago(0).to_string()).await.unwrap();
    assert_eq!(today.attr_ttl, Duration::from_secs(1), "today may change");
    assert!(matches!(
        c.fs.getattr(999_999).await,
        Err(FsError::NotFound)
    ));
    assert_eq!(errno(&c.fs.opendir(999_999).await), Some(libc::ENOENT));
    assert_eq!(errno(&c.fs.open(ROOT, false).await), Some(libc::EISDIR));
    assert!(c.list(&days_ago(3).to_string()).await.unwrap().is_empty());
    assert_eq!(c.pages(), 1);
}

// ------------------------------------------------------------------ xattrs and calls.csv

/// Two calls on one date: one with a caller id name that needs quoting in CSV, one outbound to
/// an extension.
fn two_calls(d: Date) -> (Call, Call) {
    let quoted = Call {
        name: Some("Smith, \"Jr\"\r\nSales".into()),
        number: Some("+14155550100".into()),
        duration: 93,
        ..Call::new("1234567890", at(d, "14:05:12"), "44444444")
    };
    let outbound = Call {
        inbound: false,
        number: None,
        ext: Some("205".into()),
        ..Call::new("2345678901", at(d, "09:00:00"), "44444445")
    };
    (quoted, outbound)
}

fn xattr_map(attrs: Vec<(String, Vec<u8>)>) -> std::collections::BTreeMap<String, String> {
    attrs
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
        .collect()
}

#[tokio::test]
async fn xattrs_show_the_call_and_cost_nothing() {
    let d = days_ago(2);
    let (call, _) = two_calls(d);
    let c = core(ScriptedLog::new(std::slice::from_ref(&call)), |_| {});
    c.media.add("44444444", FakeRecording::new(1000, 3));
    let day = d.to_string();
    let dir = c.list(&day).await.unwrap()[0].clone();
    let pages = c.calls();
    let want = |extra: &[(&str, &str)]| {
        let mut m: std::collections::BTreeMap<String, String> = [
            ("session_id", "1234567890"),
            ("telephony_session_id", "s-1234567890"),
            ("direction", "Inbound"),
            ("from_number", "+14155550100"),
            ("from_name", "Smith, \"Jr\"\r\nSales"),
            ("to_number", "101"),
            ("to_name", "Front Desk"),
            ("start_time", &call.start.to_string()),
            ("duration", "93"),
            ("result", "Accepted"),
            ("type", "Voice"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (format!("user.ringcentral.{k}"), v.to_string()))
        .collect();
        m.retain(|_, v| !v.is_empty());
        m
    };
    assert_eq!(xattr_map(c.fs.xattrs(dir.ino).await.unwrap()), want(&[]));
    let file = c.list(&format!("{day}/{}", dir.name)).await.unwrap()[0].clone();
    assert_eq!(
        xattr_map(c.fs.xattrs(file.ino).await.unwrap()),
        want(&[("recording_id", "44444444")]),
        "before the recording was opened its content type is not known"
    );
    // Once opened, the content type the media host answered shows too.
    let path = format!("{day}/{}/{}", dir.name, file.name);
    c.read_all(&path, 1 << 20).await.unwrap();
    let attrs = xattr_map(c.fs.xattrs(file.ino).await.unwrap());
    assert_eq!(
        attrs
            .get("user.ringcentral.content_type")
            .map(String::as_str),
        Some("audio/mpeg")
    );
    assert_eq!(
        c.fs.xattr(file.ino, "user.ringcentral.recording_id")
            .await
            .unwrap(),
        b"44444444"
    );
    for name in [
        "user.ringcentral.nothing",
        "security.selinux",
        "system.posix_acl_access",
        "trusted.x",
        "user.other",
    ] {
        assert_eq!(
            errno(&c.fs.xattr(file.ino, name).await),
            Some(libc::ENODATA),
            "{name}"
        );
    }
    // The root, dates and call.json carry none.
    assert!(c.fs.xattrs(ROOT).await.unwrap().is_empty());
    let date = c.lookup(&day).await.unwrap();
    assert!(c.fs.xattrs(date.ino).await.unwrap().is_empty());
    assert_eq!(c.calls(), pages, "attributes cost no call-log request");
    assert_eq!(errno(&c.fs.xattrs(999_999).await), Some(libc::ENOENT));
}

/// A minimal RFC 4180 reader (quoted fields, doubled quotes, CRLF records), independent of the
/// writer under test.
fn parse_csv(s: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut chars = s.chars().peekable();
    let mut quoted = false;
    while let Some(ch) = chars.next() {
        match (quoted, ch) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, ch) => field.push(ch),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {
                assert_eq!(chars.next(), Some('\n'), "CR outside quotes is a line end");
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, '\n') => panic!("bare LF outside quotes"),
            (false, ch) => field.push(ch),
        }
    }
    assert!(
        field.is_empty() && row.is_empty(),
        "the last record ends with CRLF"
    );
    rows
}

#[tokio::test]
async fn calls_csv_has_one_row_per_recording_quoted_and_sized_exactly() {
    let d = days_ago(2);
    let (quoted, outbound) = two_calls(d);
    let c = core(ScriptedLog::new(&[quoted.clone(), outbound]), |_| {});
    let day = d.to_string();
    let entries =
        c.fs.opendir(c.lookup(&day).await.unwrap().ino)
            .await
            .unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.name == "calls.csv" && e.kind == Kind::File),
        "listed in the date"
    );
    let calls = c.calls();
    let attr = c.lookup(&format!("{day}/calls.csv")).await.unwrap();
    // Small pieces, so a read that cut or padded a field would show.
    let bytes = c.read_all(&format!("{day}/calls.csv"), 7).await.unwrap();
    assert_eq!(
        attr.size,
        bytes.len() as u64,
        "getattr's size is the content's"
    );
    let rows = parse_csv(std::str::from_utf8(&bytes).unwrap());
    assert_eq!(
        rows[0],
        [
            "start",
            "direction",
            "from",
            "to",
            "from_name",
            "to_name",
            "duration",
            "result",
            "session_id",
            "recording_id",
            "path"
        ]
    );
    assert_eq!(rows.len(), 3, "a header and one row per recording");
    let sessions = c.list(&day).await.unwrap();
    // Rows follow the date's directory order (09:00 first).
    assert_eq!(rows[1][1], "Outbound");
    assert_eq!(rows[1][3], "205");
    assert_eq!(rows[1][9], "44444445");
    let q = &rows[2];
    assert_eq!(q[0], quoted.start.to_string());
    assert_eq!(q[2], "+14155550100");
    assert_eq!(
        q[4], "Smith, \"Jr\"\r\nSales",
        "quotes, comma and CRLF survive"
    );
    assert_eq!((q[5].as_str(), q[6].as_str()), ("Front Desk", "93"));
    assert_eq!((q[7].as_str(), q[8].as_str()), ("Accepted", "1234567890"));
    // The path leads to the recording, relative to the date.
    assert!(
        q[10].starts_with(&format!("{}/", sessions[1].name)),
        "{}",
        q[10]
    );
    let rec = c.lookup(&format!("{day}/{}", q[10])).await.unwrap();
    assert_eq!(rec.kind, Kind::File);
    assert_eq!(
        c.calls(),
        calls,
        "calls.csv costs nothing beyond the date's listing"
    );
    // A date without calls has the header alone.
    let empty = c
        .read_all(&format!("{}/calls.csv", days_ago(5)), 4096)
        .await
        .unwrap();
    assert_eq!(parse_csv(std::str::from_utf8(&empty).unwrap()).len(), 1);
}

#[tokio::test]
async fn calls_csv_follows_the_real_format_and_is_never_cut_by_a_stale_size() {
    let d = days_ago(3);
    let c = core(
        ScriptedLog::new(&[Call::new("1234567890", at(d, "10:00:00"), "44444444")]),
        |_| {},
    );
    let mut wav = FakeRecording::new(5000, 1);
    wav.content_type = Some("audio/wav".into());
    c.media.add("44444444", wav);
    let csv = format!("{d}/calls.csv");
    let before = c.read_all(&csv, 4096).await.unwrap();
    assert!(String::from_utf8_lossy(&before).contains("44444444.mp3"));
    // Opening the recording teaches the account's real format: the path column follows.
    let rec = c.list(&d.to_string()).await.unwrap()[0].name.clone();
    let file = c.list(&format!("{d}/{rec}")).await.unwrap()[0].name.clone();
    c.read_all(&format!("{d}/{rec}/{file}"), 1 << 20)
        .await
        .unwrap();
    let attr = c.lookup(&csv).await.unwrap();
    let after = c.read_all(&csv, 4096).await.unwrap();
    assert!(String::from_utf8_lossy(&after).contains("44444444.wav"));
    assert_eq!(attr.size, after.len() as u64);
    // A size the kernel held from before is never used to cut reads: direct I/O, short TTL.
    let opened = c.fs.open(attr.ino, false).await.unwrap();
    assert!(opened.direct_io && !opened.keep_cache, "{opened:?}");
    assert!(attr.attr_ttl <= Duration::from_secs(1));
    c.fs.release(opened.fh);
}

// ------------------------------------------------------------------ the call index

/// Every date of the window, newest first: (date, entry names, each session's call.json).
async fn snapshot(c: &Core, dates: &[Date]) -> Vec<(Date, Vec<String>, Vec<Vec<u8>>)> {
    let mut out = Vec::new();
    for d in dates {
        let entries = c.list(&d.to_string()).await.unwrap();
        let mut jsons = Vec::new();
        for e in &entries {
            jsons.push(
                c.read_all(&format!("{d}/{}/call.json", e.name), 4096)
                    .await
                    .unwrap(),
            );
        }
        out.push((*d, names(&entries), jsons));
    }
    out
}

#[tokio::test]
async fn a_core_over_the_call_index_of_an_earlier_one_lists_past_dates_for_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let open = || Arc::new(MetaStore::open(dir.path(), Duration::from_secs(90 * 86_400)).unwrap());
    let mut calls = background(today());
    // Three calls of today, however early in the day.
    let newest = (Timestamp::now() - SignedDuration::from_secs(600)).max(at(today(), "00:02:30"));
    calls.extend(calls_back_from(newest, 3, 60, 7_000_000_000, 70_000_000));
    // A non-admin user: the first core finds out with a 403 and switches to the extension's.
    let tune = |fc: &mut FsConfig| fc.settle = Duration::from_secs(60);
    let forbid = |c: &Core| {
        c.faults
            .always(|q| q.scope == Some(Scope::Account), Outcome::Forbidden)
    };
    let dates: Vec<Date> = (0..i64::from(DAYS)).map(days_ago).collect();
    let meta = open();
    let c = core_over(ScriptedLog::new(&calls), tune, Some(meta.clone()));
    forbid(&c);
    let before = snapshot(&c, &dates).await;
    let first_pages = c.pages();
    assert!(before.iter().all(|(_, n, _)| !n.is_empty()), "{before:?}");
    drop(c);
    meta.shutdown();
    drop(meta);

    let c = core_over(ScriptedLog::new(&calls), tune, Some(open()));
    forbid(&c);
    let past = snapshot(&c, &dates[1..]).await;
    assert_eq!(
        c.calls(),
        0,
        "past dates from the index: {:?}",
        c.faults.seen()
    );
    assert_eq!(past[..], before[1..], "same names and call.json");
    let today_again = snapshot(&c, &dates[..1]).await;
    assert_eq!(today_again[..], before[..1]);
    let pages = c.log.pages();
    assert_eq!(pages.len(), 1, "today: one catch-up query: {pages:?}");
    assert_eq!(c.calls(), 1, "no 403 again: {:?}", c.faults.seen());
    assert_eq!(
        pages[0].scope,
        Some(Scope::Extension),
        "the scope is reused"
    );
    let newest = calls.iter().map(|c| c.start).max().unwrap();
    assert_eq!(
        pages[0].from.map(|t| t.as_millisecond()),
        Some(newest.as_millisecond()),
        "from the newest known record"
    );
    eprintln!(
        "[core] call index: {first_pages} pages (and a 403) for the first core, {} for the second, from {}",
        pages.len(),
        newest
    );
}

#[tokio::test]
async fn a_long_call_that_shows_after_the_last_listing_is_caught_up_after_a_remount() {
    let dir = tempfile::tempdir().unwrap();
    let open = || Arc::new(MetaStore::open(dir.path(), Duration::from_secs(90 * 86_400)).unwrap());
    let now = Timestamp::now();
    let short_call = || {
        calls_back_from(
            now - SignedDuration::from_secs(600),
            1,
            60,
            7_100_000_000,
            71_000_000,
        )
    };
    let tune = |fc: &mut FsConfig| fc.settle = Duration::from_secs(3600);
    let mut calls = background(today());
    calls.extend(short_call());
    // Which dates these calls fall on depends on the time of day: each is listed where it is.
    let short_date = date_of(now - SignedDuration::from_secs(600));
    let long_date = date_of(now - SignedDuration::from_secs(1800));
    let meta = open();
    let c = core_over(ScriptedLog::new(&calls), tune, Some(meta.clone()));
    let listed = c.list(&short_date.to_string()).await.unwrap();
    assert_eq!(listed.len(), sessions_on(&calls, short_date));
    drop(c);
    meta.shutdown();
    drop(meta);

    // A call that started 30 minutes ago, before the newest known record, ended just now: the
    // call log shows it only now. The catch-up must reach back to it.
    let mut calls = background(today());
    calls.extend(short_call());
    calls.extend(calls_back_from(
        now - SignedDuration::from_secs(1800),
        1,
        60,
        7_200_000_000,
        72_000_000,
    ));
    let c = core_over(ScriptedLog::new(&calls), tune, Some(open()));
    for d in [short_date, long_date] {
        let listed = names(&c.list(&d.to_string()).await.unwrap());
        assert_eq!(listed.len(), sessions_on(&calls, d), "{d}: {listed:?}");
    }
    assert!(
        names(&c.list(&long_date.to_string()).await.unwrap())
            .iter()
            .any(|n| n.contains("7200000000")),
        "the long call is listed"
    );
    let pages = c.log.pages();
    assert_eq!(pages.len(), 1, "one catch-up query: {pages:?}");
}

#[tokio::test]
async fn a_core_over_the_call_index_holds_at_most_n_dates_and_reads_forgotten_ones_again() {
    let dir = tempfile::tempdir().unwrap();
    let open = || Arc::new(MetaStore::open(dir.path(), Duration::from_secs(90 * 86_400)).unwrap());
    let calls = background(today());
    let n = 4;
    let tune = move |fc: &mut FsConfig| {
        fc.settle = Duration::from_secs(60);
        fc.dates_in_memory = n;
    };
    let past: Vec<Date> = (1..i64::from(DAYS)).map(days_ago).collect();
    let meta = open();
    let c = core_over(ScriptedLog::new(&calls), tune, Some(meta.clone()));
    let before = snapshot(&c, &past).await;
    drop(c);
    meta.shutdown();
    drop(meta);

    let c = core_over(ScriptedLog::new(&calls), tune, Some(open()));
    assert_eq!(c.fs.dates_in_memory(), 0, "nothing read at the start");
    // The oldest date first, then the others: it is the least recently used when they come.
    let first = past[past.len() - 1];
    let session = c.list(&first.to_string()).await.unwrap()[0].name.clone();
    let session_dir = format!("{first}/{session}");
    let files = names(&c.list(&session_dir).await.unwrap());
    let file = files.iter().find(|f| *f != "call.json").unwrap().clone();
    let file_attr = c.lookup(&format!("{session_dir}/{file}")).await.unwrap();
    let dir_attr = c.lookup(&session_dir).await.unwrap();
    let mut most = 0;
    for round in 0..2 {
        for d in &past {
            let entries = c.list(&d.to_string()).await.unwrap();
            let held = c.fs.dates_in_memory();
            most = most.max(held);
            assert!(held <= n, "round {round}, {d}: {held} dates held");
            let expected = &before.iter().find(|(b, _, _)| b == d).unwrap().1;
            assert_eq!(&names(&entries), expected, "{d} read again the same");
        }
    }
    assert_eq!(most, n);
    // The file's date was forgotten: its inode still answers, and names still resolve.
    let again = c.fs.getattr(file_attr.ino).await.unwrap();
    assert_eq!((again.ino, again.size), (file_attr.ino, file_attr.size));
    for d in &past[..past.len() - 1] {
        c.list(&d.to_string()).await.unwrap();
    }
    let looked_up = c.fs.lookup(dir_attr.ino, OsStr::new(&file)).await.unwrap();
    assert_eq!(looked_up.ino, file_attr.ino, "the same inode");
    assert!(c.fs.dates_in_memory() <= n);
    assert_eq!(
        snapshot(&c, &past).await,
        before,
        "names and call.json read again"
    );
    // Known ids by name, from the index too.
    let by_session = &calls[0].session;
    let by_recording = &calls[1].recordings[0];
    c.list(&format!("by-session/{by_session}")).await.unwrap();
    c.lookup(&format!("by-recording/{by_recording}.mp3"))
        .await
        .unwrap();
    assert_eq!(
        c.list("by-session").await.unwrap().len(),
        calls.len(),
        "by-session lists the sessions of forgotten dates too"
    );
    assert_eq!(c.list("by-recording").await.unwrap().len(), calls.len());
    assert!(c.fs.dates_in_memory() <= n);
    assert_eq!(c.calls(), 0, "all from the index: {:?}", c.faults.seen());
    eprintln!(
        "[core] call index: at most {most} of {} dates held",
        past.len()
    );
}

/// The resident set of this process, in KiB (`VmRSS` of /proc/self/status).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Writes `per_date` calls on every past date of a window of `days` into the call index in
/// `dir`, each date listed completely long ago (settled), one date at a time so the test itself
/// holds little.
fn fill_index(dir: &std::path::Path, days: i64, per_date: usize) {
    let meta = MetaStore::open(dir, Duration::from_secs(90 * 86_400)).unwrap();
    let listed_at_ms = Timestamp::now().as_millisecond();
    for n in 1..days {
        let d = days_ago(n);
        let step = 86_000 / per_date as i64;
        let calls = calls_back_from(
            at(d, "23:59:00"),
            per_date,
            step,
            5_000_000_000 + n as u64 * 1_000_000,
            50_000_000 + n as u64 * 1_000_000,
        );
        let stored = calls
            .iter()
            .map(|c| ringfs::store::StoredCall {
                id: c.id.clone(),
                session_id: c.session.clone(),
                start_ms: c.start.as_millisecond(),
                json: c.json().to_string(),
                recordings: c.recordings.clone(),
            })
            .collect();
        let span = ringfs::store::Span {
            from_ms: midnight(d).as_millisecond(),
            to_ms: midnight(d.tomorrow().unwrap()).as_millisecond(),
            listed_at_ms,
        };
        meta.record(stored, vec![span]);
        meta.flush();
    }
    meta.shutdown();
}

/// The resident set after a core holding at most `held` dates walked every date of a 90-day
/// window over an index of 100,000 calls.
async fn walk_rss(held: usize) {
    let dir = tempfile::tempdir().unwrap();
    let days = 90;
    let per_date = 100_000 / (days as usize - 1) + 1;
    fill_index(dir.path(), days, per_date);
    let before = rss_kib();
    let meta = Arc::new(MetaStore::open(dir.path(), Duration::from_secs(90 * 86_400)).unwrap());
    let tune = |fc: &mut FsConfig| {
        fc.window = Window::last_days(days as u32, TimeZone::UTC);
        fc.settle = Duration::from_secs(60);
        fc.dates_in_memory = held;
    };
    let c = core_over(ScriptedLog::new(&[]), tune, Some(meta));
    let mut sessions = 0;
    for n in 1..days {
        sessions += c.list(&days_ago(n).to_string()).await.unwrap().len();
    }
    assert_eq!(sessions, per_date * (days as usize - 1));
    assert_eq!(c.calls(), 0);
    let dates = c.fs.dates_in_memory();
    assert!(dates <= held);
    let after = rss_kib();
    eprintln!(
        "[core] a walk over an index of {sessions} calls, {dates} dates held: VmRSS {before} KiB before the core, {after} KiB after the walk (+{} KiB)",
        after - before
    );
}

// The figures are the whole process's: run each alone, `cargo test --release --test core --
// --ignored --exact <name> --nocapture`.

#[tokio::test]
#[ignore = "measures the resident set of the whole process: run it alone"]
async fn the_memory_of_a_walk_over_an_index_of_100000_calls() {
    walk_rss(ringfs::fs::DATES_IN_MEMORY).await;
}

#[tokio::test]
#[ignore = "measures the resident set of the whole process: run it alone"]
async fn the_memory_of_a_walk_over_an_index_of_100000_calls_holding_every_date() {
    walk_rss(usize::MAX).await;
}

/// Time to first byte: an `open` whose size is already known (an earlier response told it)
/// answers without waiting for the media host, and a cold one waits for one round trip (the
/// response headers), not for any body. Under paused time with a media host that takes 10 s to
/// answer each request, the elapsed virtual time counts round trips exactly.
#[tokio::test(start_paused = true)]
async fn an_open_of_known_size_waits_for_no_request_and_a_cold_one_for_one() {
    let d = days_ago(2);
    let latency = Duration::from_secs(10);
    let log = Arc::new(ScriptedLog::new(&[Call::new(
        "1234567890",
        at(d, "10:00:00"),
        "44444444",
    )]));
    let media = Arc::new(FakeSource::new().with_open_latency(latency));
    media.add("44444444", FakeRecording::new(300_001, 3));
    let fs = Fs::new(
        log.clone(),
        Media::new(media.clone(), MediaConfig::default()),
        FsConfig::new(Window::last_days(DAYS, TimeZone::UTC)),
    );
    let c = Core {
        fs: Arc::new(fs),
        faults: Arc::new(Faulty::new(log.clone())),
        log,
        media: media.clone(),
    };
    let session = format!("{d}/{}", c.list(&d.to_string()).await.unwrap()[0].name);
    let file = format!("{session}/{}", c.list(&session).await.unwrap()[0].name);
    let ino = c.lookup(&file).await.unwrap().ino;

    // Cold: one round trip (the headers), and the bodies are held so no byte is waited for.
    media.set_limit(Some(0));
    let t0 = tokio::time::Instant::now();
    let cold = c.fs.open(ino, false).await.unwrap();
    let cold_wait = t0.elapsed();
    assert_eq!(cold_wait, latency, "a cold open waits for the headers only");
    assert_eq!(c.fs.getattr(ino).await.unwrap().size, 300_001);
    c.fs.release(cold.fh);
    media.set_limit(None);

    // Known size: no request, no wait, although the host would take 10 s (and holds bodies).
    media.set_limit(Some(0));
    let opens = media.opens().len();
    let t1 = tokio::time::Instant::now();
    let warm = c.fs.open(ino, false).await.unwrap();
    assert_eq!(t1.elapsed(), Duration::ZERO, "an open of known size waited");
    assert_eq!(
        media.opens().len(),
        opens,
        "an open of known size sent a request"
    );
    assert!(warm.keep_cache && !warm.direct_io, "{warm:?}");
    c.fs.release(warm.fh);
    media.set_limit(None);
    eprintln!("[core] cold open {cold_wait:?} (one 10 s round trip), open of known size 0 s");
}

/// `call.json` of a date that may still be listed again can change under its size (a re-list or
/// the event feed replaces the record): a short attribute TTL and direct I/O. A settled date's
/// never changes: the page cache keeps it.
#[tokio::test(start_paused = true)]
async fn call_json_of_a_recent_date_is_never_cached_under_a_stale_size() {
    let (old, now) = (days_ago(5), today());
    let recent_start =
        (Timestamp::now() - jiff::SignedDuration::from_secs(600)).max(at(now, "00:00:30"));
    let calls = [
        Call::new("1111111111", at(old, "10:00:00"), "11111111"),
        Call::new("2222222222", recent_start, "22222222"),
    ];
    let c = core(ScriptedLog::new(&calls), |_| {});
    for (date, session, changing) in [(old, "1111111111", false), (now, "2222222222", true)] {
        let day = date.to_string();
        let dir = c
            .list(&day)
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.name.ends_with(session))
            .unwrap();
        let a = c
            .lookup(&format!("{day}/{}/call.json", dir.name))
            .await
            .unwrap();
        let o = c.fs.open(a.ino, false).await.unwrap();
        assert_eq!(o.direct_io, changing, "{day}");
        assert_eq!(o.keep_cache, !changing, "{day}");
        assert_eq!(
            a.attr_ttl <= Duration::from_secs(1),
            changing,
            "{day}: {a:?}"
        );
    }
}

// ------------------------------------------------------------------ time of day

/// Every test of this binary builds its calls around "now" and the dates around it, so a test
/// that holds only at some hours (a call ten minutes ago is yesterday's just after midnight; the
/// first date of a walk holds a fraction of a day that depends on the hour) passes wherever it
/// was written and fails in a CI run at another hour. This runs the whole binary again under
/// libfaketime (the wall clock only; tokio's monotonic clock is left alone) just after midnight
/// and late in the evening.
#[test]
fn every_test_holds_at_any_time_of_day() {
    const NESTED: &str = "RINGFS_CORE_FAKETIME";
    if std::env::var_os(NESTED).is_some() {
        return;
    }
    let Some(faketime) = on_path("faketime") else {
        eprintln!("[core] skipped: no faketime (Debian: apt-get install faketime)");
        return;
    };
    let me = std::env::current_exe().unwrap();
    for at in ["2026-12-01 00:05:00", "2026-12-01 23:40:00"] {
        let out = std::process::Command::new(&faketime)
            .args(["-f", &format!("@{at}")])
            .arg(&me)
            .args(["--test-threads=2", "-q"])
            .env(NESTED, at)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let failures: Vec<&str> = stdout
            .lines()
            .filter(|l| l.trim_end().ends_with("FAILED"))
            .collect();
        eprintln!(
            "[core] at {at} UTC: {}",
            stdout
                .lines()
                .rfind(|l| l.starts_with("test result"))
                .unwrap_or("?")
        );
        assert!(
            out.status.success(),
            "at {at} UTC: {failures:?}\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The path of `program` on the PATH (the same look-up as `tests/common/garage.rs`, which
/// this binary does not compile).
fn on_path(program: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
