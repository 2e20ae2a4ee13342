//! Fault injection: real mounts over the emulator's fault settings (dropped and slow media,
//! 5xx bursts, 429 storms with and without `Retry-After`, short-lived tokens without refresh
//! tokens, a hung or unreachable API, hostile and odd records), concurrency, unmounts during
//! reads, SIGKILL and remount of the real binary, and what must never leak (secrets in logs,
//! the mount to another user).
//!
//! The guarantees checked everywhere: a read returns exactly the recording's bytes or a clean
//! error (EIO, or EAGAIN for not yet available); no read or listing blocks much longer than the
//! read timeout; the mount recovers once faults stop; no request is sent in a group while a 429
//! told it to wait; memory stays within the cache budget; nothing panics.
//!
//! Each test prints its figures (`[faults] name: ...`); `cargo test --test faults --
//! --nocapture` shows them. The long mixed-fault soak is ignored by default; `cargo test --test
//! faults soak -- --ignored` runs it (`RINGFS_SOAK_SECS` sets its length, default 600).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use common::*;
use jiff::Timestamp;
use ringfs::api::{Client, ClientConfig, Credentials};
use ringfs::catalog::Window;
use ringfs::emulator::{Config, Emulator, ExtraCall, Faults, RateLimits};
use ringfs::fs::{Fs, FsConfig};
use ringfs::media::{Media, MediaConfig};

// ------------------------------------------------------------------ panics

/// Panics on threads that are not a test's own (tokio workers, the FUSE session): ringfs code.
static FOREIGN_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn watch_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current()
                .name()
                .unwrap_or("<unnamed>")
                .to_string();
            // Test threads are named after their test; readers spawned here are `reader-*`.
            let ours = name.starts_with("reader-")
                || name.starts_with("check-")
                || name.contains("::")
                || TESTS.contains(&name.as_str());
            if !ours {
                FOREIGN_PANICS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("{name}: {info}"));
            }
            prev(info);
        }));
    });
}

const TESTS: &[&str] = &[
    "dropped_slow_and_failing_media_never_give_wrong_bytes",
    "short_lived_tokens_without_refresh_tokens_keep_reads_exact",
    "throttling_storms_are_waited_out_and_never_extended",
    "a_hung_or_unreachable_api_fails_fast_and_the_mount_recovers",
    "thirty_two_readers_on_one_recording_and_on_thirty_two",
    "ls_recursive_while_files_stream_under_faults",
    "unmount_during_reads_neither_hangs_nor_panics",
    "hostile_and_odd_records_stay_inside_their_directories",
    "the_binary_keeps_secrets_private_and_survives_sigkill",
    "soak",
    "ls_l_of_a_date_with_10000_sessions_is_not_quadratic",
    "a_session_directory_with_an_odd_session_id_can_be_entered",
    "listing_while_the_api_hangs_fails_within_the_read_timeout",
    "sigterm_right_after_the_mount_returns_unmounts",
];

fn assert_no_foreign_panics() {
    let p = FOREIGN_PANICS.lock().unwrap_or_else(|e| e.into_inner());
    assert!(p.is_empty(), "ringfs panicked: {p:#?}");
}

// ------------------------------------------------------------------ figures

/// What a test did, printed at its end.
#[derive(Default)]
struct Figures {
    reads: AtomicU64,
    bytes: AtomicU64,
    eio: AtomicU64,
    eagain: AtomicU64,
}

impl Figures {
    fn print(&self, name: &str, emu: &Emulator, client: Option<&Client>) {
        let s = emu.stats();
        let c = client.map(|c| c.stats()).unwrap_or_default();
        eprintln!(
            "[faults] {name}: faults injected {} (429s sent {}), reads checked {}, bytes compared {}, \
             errors returned {} (EIO {}, EAGAIN {}); client retries {}, logins {}, refreshes {}, \
             429s seen {}; requests {:?}; penalty violations {}, Retry-After violations {}",
            s.faults_injected,
            s.throttled,
            self.reads.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.eio.load(Ordering::Relaxed) + self.eagain.load(Ordering::Relaxed),
            self.eio.load(Ordering::Relaxed),
            self.eagain.load(Ordering::Relaxed),
            c.retries,
            c.logins,
            c.refreshes,
            c.throttled,
            s.by_group,
            s.penalty_violations,
            s.retry_after_violations,
        );
    }

    /// Counts an error, which must be a clean one.
    fn error(&self, what: &str, e: &std::io::Error) {
        match e.raw_os_error() {
            Some(libc::EIO) => self.eio.fetch_add(1, Ordering::Relaxed),
            Some(libc::EAGAIN) => self.eagain.fetch_add(1, Ordering::Relaxed),
            _ => panic!("{what}: not a clean error: {e} ({:?})", e.raw_os_error()),
        };
    }

    /// Reads a whole file: exactly `want`, or a clean error (returned).
    fn read_whole(&self, path: &Path, want: &[u8]) -> Result<(), i32> {
        match std::fs::read(path) {
            Ok(got) => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                assert!(
                    got == want,
                    "WRONG BYTES from {}: {} bytes, want {} (first difference at {:?})",
                    path.display(),
                    got.len(),
                    want.len(),
                    got.iter().zip(want).position(|(a, b)| a != b)
                );
                self.bytes.fetch_add(got.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.error(&path.display().to_string(), &e);
                Err(e.raw_os_error().unwrap_or(0))
            }
        }
    }
}

// ------------------------------------------------------------------ stacks

/// Knobs of a fault-test stack.
#[derive(Clone)]
struct Tune {
    cache_bytes: u64,
    read_timeout: Duration,
    stall_timeout: Duration,
}

impl Default for Tune {
    fn default() -> Self {
        Tune {
            cache_bytes: 64 << 20,
            read_timeout: Duration::from_secs(8),
            stall_timeout: Duration::from_secs(3),
        }
    }
}

/// Like `common::stack`, with the client's timeouts and backoff scaled down so that a test of
/// faults runs in seconds, and the read timeout of both the media layer and the core set.
fn fault_stack(cfg: Config, tune: &Tune) -> Stack {
    watch_panics();
    let rt = runtime();
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    let mut cc = ClientConfig::new(Credentials {
        server_url: emu.api_url(),
        client_id: cfg.client_id.clone(),
        client_secret: cfg.client_secret.clone(),
        jwt: cfg.jwt.clone(),
    });
    cc.media_base = Some(emu.media_url());
    cc.connect_timeout = Duration::from_secs(2);
    cc.stall_timeout = tune.stall_timeout;
    cc.backoff_base = Duration::from_millis(100);
    cc.backoff_max = Duration::from_secs(1);
    let client = Client::new(cc).unwrap();
    rt.block_on(client.login()).unwrap();
    let media = Media::new(
        Arc::new(ringfs::source::ApiMedia::new(client.clone())),
        MediaConfig {
            cache_bytes: tune.cache_bytes,
            read_timeout: tune.read_timeout,
            ..MediaConfig::default()
        },
    );
    let mut fc = FsConfig::new(Window::last_days(cfg.days, jiff::tz::TimeZone::UTC));
    fc.recent_ttl = Duration::from_secs(1);
    fc.read_timeout = tune.read_timeout;
    let fs = Arc::new(Fs::new(Arc::new(client.clone()), media, fc));
    Stack {
        rt,
        emu,
        client,
        fs,
    }
}

/// An emulator config with every call settled (fetchable) and no rate limits.
fn settled_config(calls: usize, days: u32) -> Config {
    let mut c = quick_config(calls, days);
    c.record_delay = Duration::ZERO;
    c.recording_delay = Duration::ZERO;
    c
}

/// Recording files listed under the date directories: (path, id, length), fetchable now.
fn date_recordings(m: &Mounted) -> Vec<(PathBuf, String, u64)> {
    let now = Timestamp::now();
    let calls = m.emu().calls();
    let mut out = Vec::new();
    for d in std::fs::read_dir(m.path()).unwrap() {
        let d = d.unwrap().path();
        if d.ends_with("by-session") || d.ends_with("by-recording") {
            continue;
        }
        for rel in walk_files(&d) {
            if !rel.extension().is_some_and(|e| e == "mp3" || e == "wav") {
                continue;
            }
            let id = recording_id_of(&rel);
            if let Some(c) = calls
                .iter()
                .find(|c| c.recording_id.as_deref() == Some(&id) && c.fetchable_at < now)
            {
                out.push((d.join(rel), id, c.recording_len.unwrap()));
            }
        }
    }
    out.sort_by_key(|r| r.2);
    out
}

/// Runs `f` on a thread and waits at most `limit` for it: a hang is a test failure, not a hung
/// suite. Returns what `f` returned and how long it took.
fn bounded<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::Builder::new()
        .name(format!("check-{what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    match rx.recv_timeout(limit) {
        Ok(v) => (v, start.elapsed()),
        Err(_) => panic!("{what} blocked for more than {limit:?}"),
    }
}

fn errno_of(r: &std::io::Result<impl Sized>) -> Option<i32> {
    r.as_ref().err().and_then(|e| e.raw_os_error())
}

// ------------------------------------------------------------------ media faults

#[test]
fn dropped_slow_and_failing_media_never_give_wrong_bytes() {
    if !can_mount() {
        return;
    }
    let m = mount(fault_stack(settled_config(80, 4), &Tune::default()));
    let files: Vec<_> = date_recordings(&m)
        .into_iter()
        .filter(|r| r.2 <= 2_500_000)
        .take(16)
        .collect();
    assert!(files.len() >= 10, "too few recordings: {}", files.len());
    let fig = Figures::default();
    // 25 % of media responses cut mid-body, bodies capped at 4 MB/s, 10 % of requests 5xx.
    m.emu().set_faults(Faults {
        drop_fraction: 0.25,
        max_bytes_per_sec: Some(4 << 20),
        error_5xx_fraction: 0.1,
        ..Faults::default()
    });
    let mut failed = Vec::new();
    for (path, id, _) in &files {
        let want = m.emu().recording_bytes(id).unwrap();
        if fig.read_whole(path, &want).is_err() {
            failed.push((path.clone(), want));
        }
    }
    // Seeks and partial reads under the same faults: a fresh handle per offset.
    for (path, id, len) in files.iter().rev().take(4) {
        for off in [len / 3, len - 700, 5, len / 2] {
            let want = m.emu().recording_range(id, off, 4096).unwrap();
            let mut f = match std::fs::File::open(path) {
                Ok(f) => f,
                Err(e) => {
                    fig.error("open", &e);
                    continue;
                }
            };
            f.seek(SeekFrom::Start(off)).unwrap();
            let mut buf = vec![0; 4096];
            let mut n = 0;
            let res = loop {
                match f.read(&mut buf[n..]) {
                    Ok(0) => break Ok(()),
                    Ok(k) => n += k,
                    Err(e) => break Err(e),
                }
                if n == buf.len() {
                    break Ok(());
                }
            };
            match res {
                Ok(()) => {
                    assert_eq!(&buf[..n], &want[..], "{} at {off}", path.display());
                    fig.reads.fetch_add(1, Ordering::Relaxed);
                    fig.bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => fig.error("seek read", &e),
            }
        }
    }
    let s = m.emu().stats();
    assert!(s.faults_injected >= 3, "faults were injected: {s:?}");
    // Faults stop: everything that failed reads exactly, without a remount.
    m.emu().set_faults(Faults::default());
    for (path, want) in &failed {
        assert_eq!(
            fig.read_whole(path, want),
            Ok(()),
            "{} after the faults stopped",
            path.display()
        );
    }
    let c = m.stack.client.stats();
    let sent: u64 = c.requests_by_group.values().sum();
    assert!(
        c.retries <= sent,
        "retries {} of {sent} requests",
        c.retries
    );
    fig.print(
        "dropped_slow_and_failing_media_never_give_wrong_bytes",
        m.emu(),
        Some(&m.stack.client),
    );
    assert_no_foreign_panics();
}

#[test]
fn short_lived_tokens_without_refresh_tokens_keep_reads_exact() {
    if !can_mount() {
        return;
    }
    let mut cfg = settled_config(40, 3);
    cfg.access_ttl = Duration::from_secs(2);
    cfg.issue_refresh_tokens = false;
    // A cache smaller than the files read, so every pass downloads again.
    let m = mount(fault_stack(
        cfg,
        &Tune {
            cache_bytes: 2 << 20,
            ..Tune::default()
        },
    ));
    let files: Vec<_> = date_recordings(&m)
        .into_iter()
        .filter(|r| r.2 <= 1_500_000)
        .take(12)
        .collect();
    assert!(files.len() >= 6);
    let fig = Figures::default();
    // Slow bodies so that tokens expire in the middle of downloads, and cuts so that resumes
    // need a fresh token.
    m.emu().set_faults(Faults {
        max_bytes_per_sec: Some(1 << 20),
        drop_fraction: 0.2,
        ..Faults::default()
    });
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(7) {
        for (path, id, _) in &files {
            let want = m.emu().recording_bytes(id).unwrap();
            let _ = fig.read_whole(path, &want);
        }
        // The kernel's page cache would answer re-reads: drop it so each pass asks ringfs.
        forget_pages(files.iter().map(|f| &f.0));
    }
    let c = m.stack.client.stats();
    assert!(
        c.logins >= 3,
        "tokens expired and JWT logins replaced them: {c:?}"
    );
    assert!(
        c.requests("Heavy") >= 2 * files.len() as u64,
        "re-reads were downloads: {c:?}"
    );
    assert_eq!(c.refreshes, 0);
    assert!(fig.reads.load(Ordering::Relaxed) > 0);
    fig.print(
        "short_lived_tokens_without_refresh_tokens_keep_reads_exact",
        m.emu(),
        Some(&m.stack.client),
    );
    assert_no_foreign_panics();
}

/// Asks the kernel to forget its cached pages of `files` (best effort), so the next read asks
/// ringfs again. Per file (`POSIX_FADV_DONTNEED`), not the machine-wide `drop_caches`: other
/// people's benchmarks share this machine.
fn forget_pages<'a>(files: impl IntoIterator<Item = &'a PathBuf>) {
    use std::os::fd::AsRawFd;
    for p in files {
        if let Ok(f) = std::fs::File::open(p) {
            // SAFETY: plain fadvise on an open descriptor.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
}

// ------------------------------------------------------------------ rate limits

#[test]
fn throttling_storms_are_waited_out_and_never_extended() {
    if !can_mount() {
        return;
    }
    let mut cfg = settled_config(60, 3);
    // A real budget: 6 Heavy requests per 2 s, 3 s penalty; Auth unlimited.
    cfg.rate = RateLimits {
        window: Duration::from_secs(2),
        penalty: Duration::from_secs(3),
        heavy: 6,
        ..RateLimits::unlimited()
    };
    let tune = Tune {
        read_timeout: Duration::from_secs(6),
        ..Tune::default()
    };
    let m = mount(fault_stack(cfg, &tune));
    let files: Vec<_> = date_recordings(&m)
        .into_iter()
        .filter(|r| r.2 <= 1_000_000)
        .collect();
    assert!(files.len() >= 12, "{}", files.len());
    let fig = Figures::default();

    // A storm of forced 429s with Retry-After: 2, readers in parallel.
    m.emu().set_faults(Faults {
        force_429_fraction: 0.2,
        force_429_retry_after: Some(2),
        ..Faults::default()
    });
    let batch: Vec<_> = files[..8].to_vec();
    let fig = Arc::new(fig);
    let wants: Vec<_> = batch
        .iter()
        .map(|(_, id, _)| m.emu().recording_bytes(id).unwrap())
        .collect();
    let mut handles = Vec::new();
    for (i, ((path, _, _), want)) in batch.into_iter().zip(wants).enumerate() {
        let fig = fig.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("reader-{i}"))
                .spawn(move || fig.read_whole(&path, &want))
                .unwrap(),
        );
    }
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let s = m.emu().stats();
    assert!(s.throttled > 0, "the storm sent 429s: {s:?}");
    assert_eq!(
        s.retry_after_violations, 0,
        "requests sent before Retry-After passed: {s:?}"
    );
    assert_eq!(s.penalty_violations, 0, "a penalty was extended: {s:?}");
    eprintln!("[faults] 429 storm with Retry-After: {results:?}");

    // One 429 without Retry-After: the group waits 30 s (the contract's minimum); reads
    // meanwhile fail with EIO within the read timeout instead of hanging.
    m.emu().set_faults(Faults {
        force_429_fraction: 1.0,
        force_429_retry_after: None,
        ..Faults::default()
    });
    let before = m.emu().stats().throttled;
    let (path, id, _) = files[9].clone();
    let want = m.emu().recording_bytes(&id).unwrap();
    let fig2 = fig.clone();
    let p2 = path.clone();
    let w2 = want.clone();
    let reader = std::thread::Builder::new()
        .name("reader-no-retry-after".into())
        .spawn(move || fig2.read_whole(&p2, &w2))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || (m.emu().stats().throttled
            > before)
            .then_some(()))
        .is_some()
    );
    m.emu().set_faults(Faults::default());
    let held_at = Instant::now();
    let r = reader.join().unwrap();
    assert!(
        held_at.elapsed() < tune.read_timeout + Duration::from_secs(5),
        "{:?}",
        held_at.elapsed()
    );
    assert_eq!(
        r,
        Err(libc::EIO),
        "a read during a 30 s hold fails with EIO"
    );
    // Another read during the hold: EIO again, within the read timeout, and no request.
    let (other, oid, _) = files[10].clone();
    let owant = m.emu().recording_bytes(&oid).unwrap();
    let t = Instant::now();
    let r = fig.read_whole(&other, &owant);
    assert_eq!(r, Err(libc::EIO));
    assert!(
        t.elapsed() < tune.read_timeout + Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    // Recovery once the hold is over, without a remount.
    let ok = eventually(Duration::from_secs(60), || {
        fig.read_whole(&path, &want).ok()
    });
    assert!(ok.is_some(), "the mount recovered after the hold");
    assert!(
        held_at.elapsed() >= Duration::from_secs(20),
        "the 30 s hold was kept: {:?}",
        held_at.elapsed()
    );
    let s = m.emu().stats();
    assert_eq!(
        s.retry_after_violations, 0,
        "requests sent before Retry-After passed: {s:?}"
    );
    assert_eq!(s.penalty_violations, 0, "a penalty was extended: {s:?}");
    fig.print(
        "throttling_storms_are_waited_out_and_never_extended",
        m.emu(),
        Some(&m.stack.client),
    );
    assert_no_foreign_panics();
}

// ------------------------------------------------------------------ the API goes away

#[test]
fn a_hung_or_unreachable_api_fails_fast_and_the_mount_recovers() {
    if !can_mount() {
        return;
    }
    let tune = Tune {
        read_timeout: Duration::from_secs(4),
        stall_timeout: Duration::from_secs(3),
        ..Tune::default()
    };
    let m = mount(fault_stack(settled_config(60, 6), &tune));
    let fig = Figures::default();
    let limit = tune.read_timeout + Duration::from_secs(6);
    let today = Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date();
    let dates: Vec<String> = vec![
        (today - jiff::Span::new().days(1)).to_string(),
        today.to_string(),
    ];
    // Per phase: a session id nobody looked up and a recording not read yet.
    let now = Timestamp::now();
    let recs: Vec<String> = m
        .emu()
        .calls()
        .iter()
        .filter(|c| c.fetchable_at < now && c.recording_len.is_some_and(|l| l < 2_000_000))
        .filter_map(|c| c.recording_id.clone())
        .take(2)
        .collect();

    for (i, (phase, faults)) in [
        (
            "hang",
            Faults {
                hang: true,
                ..Faults::default()
            },
        ),
        (
            "unreachable",
            Faults {
                unreachable: true,
                ..Faults::default()
            },
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let rec_id = recs[i].clone();
        let rec_want = m.emu().recording_bytes(&rec_id).unwrap();
        m.emu().set_faults(faults);
        // Listing a date not listed yet: yesterday first (its listing reaches back over the
        // older dates), then today (listed again after `recent_ttl`).
        let dir = m.p(&dates[if phase == "hang" { 0 } else { 1 }]);
        std::thread::sleep(Duration::from_millis(1100));
        let (r, took) = bounded(
            &format!("ls-{phase}"),
            Duration::from_secs(120),
            move || std::fs::read_dir(&dir).map(|d| d.count()),
        );
        assert_eq!(errno_of(&r), Some(libc::EIO), "{phase}: listing: {r:?}");
        assert!(
            took < limit,
            "{phase}: listing blocked {took:?} (read timeout {:?})",
            tune.read_timeout
        );
        fig.eio.fetch_add(1, Ordering::Relaxed);
        // A session and a recording looked up by id.
        let p = m.p(&format!("by-session/55500011{i}"));
        let (r, took) = bounded(
            &format!("by-session-{phase}"),
            Duration::from_secs(120),
            move || std::fs::metadata(&p),
        );
        assert_eq!(errno_of(&r), Some(libc::EIO), "{phase}: by-session: {r:?}");
        assert!(took < limit, "{phase}: by-session lookup blocked {took:?}");
        fig.eio.fetch_add(1, Ordering::Relaxed);
        let p = m.p(&format!("by-recording/{rec_id}.mp3"));
        let (r, took) = bounded(
            &format!("by-recording-{phase}"),
            Duration::from_secs(120),
            move || std::fs::read(&p),
        );
        assert_eq!(
            errno_of(&r),
            Some(libc::EIO),
            "{phase}: by-recording: {:?}",
            r.map(|v| v.len())
        );
        assert!(took < limit, "{phase}: by-recording read blocked {took:?}");
        fig.eio.fetch_add(1, Ordering::Relaxed);

        // The API comes back: everything works again without a remount.
        m.emu().set_faults(Faults::default());
        let p = m.p(&format!("by-recording/{rec_id}.mp3"));
        let back = eventually(Duration::from_secs(40), || {
            fig.read_whole(&p, &rec_want).ok()
        });
        assert!(back.is_some(), "{phase}: the mount recovered");
        let dir = m.p(&dates[if phase == "hang" { 0 } else { 1 }]);
        let listed = eventually(Duration::from_secs(20), || {
            std::fs::read_dir(&dir).ok().map(|d| d.count())
        });
        assert!(listed.is_some(), "{phase}: listing recovered");
    }
    fig.print(
        "a_hung_or_unreachable_api_fails_fast_and_the_mount_recovers",
        m.emu(),
        Some(&m.stack.client),
    );
    assert_no_foreign_panics();
}

// ------------------------------------------------------------------ concurrency

#[test]
fn thirty_two_readers_on_one_recording_and_on_thirty_two() {
    if !can_mount() {
        return;
    }
    // A budget smaller than what 32 readers stream at once (32 x 2 MiB of read-ahead).
    let tune = Tune {
        cache_bytes: 6 << 20,
        read_timeout: Duration::from_secs(20),
        ..Tune::default()
    };
    let m = mount(fault_stack(settled_config(150, 6), &tune));
    let all = date_recordings(&m);
    let small: Vec<_> = all
        .iter()
        .filter(|r| r.2 <= 900_000)
        .take(32)
        .cloned()
        .collect();
    assert_eq!(small.len(), 32, "32 small recordings");
    let one = all
        .iter()
        .find(|r| r.2 >= 1_000_000 && r.2 <= 4_000_000)
        .cloned()
        .expect("a 1-4 MB recording");
    let fig = Arc::new(Figures::default());
    m.emu().set_faults(Faults {
        drop_fraction: 0.15,
        max_bytes_per_sec: Some(8 << 20),
        ..Faults::default()
    });

    // 32 readers of one recording, all at once.
    let want = Arc::new(m.emu().recording_bytes(&one.1).unwrap());
    let media0 = m.stack.fs.media().stats().opens;
    let handles: Vec<_> = (0..32)
        .map(|i| {
            let (fig, want, path) = (fig.clone(), want.clone(), one.0.clone());
            std::thread::Builder::new()
                .name(format!("reader-{i}"))
                .spawn(move || fig.read_whole(&path, &want))
                .unwrap()
        })
        .collect();
    let res: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let opens = m.stack.fs.media().stats().opens - media0;
    eprintln!(
        "[faults] 32 readers of one recording: {} ok, {} downloads started",
        res.iter().filter(|r| r.is_ok()).count(),
        opens
    );
    assert!(
        opens <= 8,
        "32 readers of one recording shared its download: {opens} downloads"
    );

    // 32 readers of 32 recordings.
    let handles: Vec<_> = small
        .iter()
        .enumerate()
        .map(|(i, (path, id, _))| {
            let (fig, path) = (fig.clone(), path.clone());
            let want = m.emu().recording_bytes(id).unwrap();
            std::thread::Builder::new()
                .name(format!("reader-{i}"))
                .spawn(move || fig.read_whole(&path, &want))
                .unwrap()
        })
        .collect();
    let res: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    eprintln!(
        "[faults] 32 readers of 32 recordings: {} ok",
        res.iter().filter(|r| r.is_ok()).count()
    );
    assert!(
        res.iter().filter(|r| r.is_ok()).count() >= 16,
        "most readers got their bytes: {res:?}"
    );

    // Memory: the media layer's byte total never exceeded the budget (plus one chunk of slack).
    let ms = m.stack.fs.media().stats();
    assert!(
        ms.peak_bytes <= tune.cache_bytes + (256 << 10),
        "peak {} > budget {}",
        ms.peak_bytes,
        tune.cache_bytes
    );
    eprintln!("[faults] media: {ms:?}");
    fig.print(
        "thirty_two_readers_on_one_recording_and_on_thirty_two",
        m.emu(),
        Some(&m.stack.client),
    );
    assert_no_foreign_panics();
}

#[test]
fn ls_recursive_while_files_stream_under_faults() {
    if !can_mount() {
        return;
    }
    let m = mount(fault_stack(settled_config(200, 8), &Tune::default()));
    // Files to stream from the seed call's session; `ls -R` lists every date meanwhile, under
    // cut and slow media, 5xx and truncated call-log pages.
    let seed = m.p("by-session/1234567890");
    let mut files: Vec<(PathBuf, String, u64)> = walk_files(&seed)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "mp3"))
        .map(|p| (seed.join(&p), recording_id_of(&p), 0))
        .collect();
    let calls = m.emu().calls();
    files.extend(
        calls
            .iter()
            .filter(|c| {
                c.fetchable_at < Timestamp::now()
                    && c.recording_len
                        .is_some_and(|l| (200_000..1_500_000).contains(&l))
            })
            .take(7)
            .map(|c| {
                (
                    m.p(&format!(
                        "by-recording/{}.mp3",
                        c.recording_id.clone().unwrap()
                    )),
                    c.recording_id.clone().unwrap(),
                    0,
                )
            }),
    );
    assert!(files.len() >= 6);
    let fig = Arc::new(Figures::default());
    m.emu().set_faults(Faults {
        drop_fraction: 0.2,
        max_bytes_per_sec: Some(1 << 20),
        error_5xx_fraction: 0.05,
        malformed_json_fraction: 0.3,
        ..Faults::default()
    });
    let handles: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, (path, id, _))| {
            let (fig, path) = (fig.clone(), path.clone());
            let want = m.emu().recording_bytes(id).unwrap();
            std::thread::Builder::new()
                .name(format!("reader-{i}"))
                .spawn(move || fig.read_whole(&path, &want))
                .unwrap()
        })
        .collect();
    let mut ls_ok = 0;
    for _ in 0..3 {
        let root = m.path().to_path_buf();
        let (out, took) = bounded("ls-R", Duration::from_secs(60), move || {
            Command::new("ls").arg("-R").arg(&root).output().unwrap()
        });
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("by-recording"), "{text}");
        if out.status.success() {
            ls_ok += 1;
        } else {
            // Only clean errors: a date whose page was truncated is EIO, nothing else.
            let err = String::from_utf8_lossy(&out.stderr);
            for line in err.lines() {
                assert!(line.contains("Input/output error"), "ls -R: {line}");
                fig.eio.fetch_add(1, Ordering::Relaxed);
            }
        }
        eprintln!("[faults] ls -R while streaming: {} in {took:?}", out.status);
    }
    for h in handles {
        let _ = h.join().unwrap();
    }
    m.emu().set_faults(Faults::default());
    let root = m.path().to_path_buf();
    let (out, _) = bounded("ls-R-after", Duration::from_secs(60), move || {
        Command::new("ls").arg("-R").arg(&root).output().unwrap()
    });
    assert!(
        out.status.success(),
        "ls -R after the faults: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let dates = text
        .lines()
        .filter(|l| l.ends_with(':') && l.len() > 12)
        .count();
    assert!(dates >= 8, "ls -R listed the dates: {dates}");
    eprintln!("[faults] ls -R succeeded {ls_ok}/3 times under faults");
    fig.print(
        "ls_recursive_while_files_stream_under_faults",
        m.emu(),
        Some(&m.stack.client),
    );
    assert_no_foreign_panics();
}

#[test]
fn unmount_during_reads_neither_hangs_nor_panics() {
    if !can_mount() {
        return;
    }
    let fig = Arc::new(Figures::default());
    // Two ways to go: `umount -l` (the kernel detaches, open files keep working), then dropping
    // the session (ringfs's own unmount) while reads are in flight.
    for how in ["umount -l", "drop"] {
        let m = mount(fault_stack(settled_config(60, 4), &Tune::default()));
        let files: Vec<_> = date_recordings(&m)
            .into_iter()
            .filter(|r| r.2 >= 300_000 && r.2 <= 2_000_000)
            .take(6)
            .collect();
        assert!(files.len() >= 4);
        // Slow enough that every read is still going when the mount goes.
        m.emu().set_faults(Faults {
            max_bytes_per_sec: Some(256 << 10),
            ..Faults::default()
        });
        let started = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(i, (path, id, _))| {
                let (fig, path, started) = (fig.clone(), path.clone(), started.clone());
                let want = m.emu().recording_bytes(id).unwrap();
                std::thread::Builder::new()
                    .name(format!("reader-{i}"))
                    .spawn(move || {
                        let mut f = match std::fs::File::open(&path) {
                            Ok(f) => f,
                            Err(e) => return Err(e.raw_os_error()),
                        };
                        started.fetch_add(1, Ordering::Relaxed);
                        let mut got = Vec::new();
                        match f.read_to_end(&mut got) {
                            Ok(_) => {
                                assert!(
                                    got == want,
                                    "wrong bytes after an unmount ({} of {})",
                                    got.len(),
                                    want.len()
                                );
                                fig.reads.fetch_add(1, Ordering::Relaxed);
                                fig.bytes.fetch_add(got.len() as u64, Ordering::Relaxed);
                                Ok(())
                            }
                            Err(e) => {
                                // A read cut by the unmount: any error, never wrong bytes.
                                assert!(want.starts_with(&got), "wrong bytes before the unmount");
                                Err(e.raw_os_error())
                            }
                        }
                    })
                    .unwrap()
            })
            .collect();
        assert!(
            eventually(Duration::from_secs(20), || (started
                .load(Ordering::Relaxed)
                == files.len() as u64)
                .then_some(()))
            .is_some()
        );
        std::thread::sleep(Duration::from_millis(500));
        let path = m.path().to_path_buf();
        let t = Instant::now();
        if how == "umount -l" {
            let st = Command::new("umount")
                .arg("-l")
                .arg(&path)
                .status()
                .unwrap();
            assert!(st.success());
            // Open files keep reading the detached mount; the readers finish.
            let res: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            eprintln!(
                "[faults] reads across `umount -l`: {res:?} in {:?}",
                t.elapsed()
            );
            assert!(
                res.iter().all(|r| r.is_ok()),
                "reads across a lazy unmount: {res:?}"
            );
            let (_, took) = bounded("drop-after-umount", Duration::from_secs(30), move || {
                drop(m)
            });
            eprintln!("[faults] session dropped in {took:?}");
        } else {
            let (_, took) = bounded("drop-during-reads", Duration::from_secs(30), move || {
                drop(m)
            });
            let res: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            eprintln!("[faults] reads across a session drop: {res:?}; dropped in {took:?}");
        }
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        assert!(
            !mounts.contains(&*path.to_string_lossy()),
            "{} still mounted",
            path.display()
        );
    }
    eprintln!(
        "[faults] unmount_during_reads_neither_hangs_nor_panics: reads checked {}, bytes compared {}",
        fig.reads.load(Ordering::Relaxed),
        fig.bytes.load(Ordering::Relaxed)
    );
    assert_no_foreign_panics();
}

// ------------------------------------------------------------------ bad input

/// Checks one directory listing: every name is a single, safe path component that looks up to
/// an entry of this very directory.
fn check_names(dir: &Path, names: &[String]) {
    let unique: BTreeSet<_> = names.iter().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "duplicate names in {}",
        dir.display()
    );
    for n in names {
        assert!(!n.is_empty() && n != "." && n != "..", "{n:?}");
        assert!(n.len() <= 255, "{} bytes: {n:?}", n.len());
        assert!(
            !n.contains('/') && !n.contains('\0') && !n.contains(':'),
            "{n:?}"
        );
        assert!(
            !n.chars().any(|c| c.is_control()),
            "control character in {n:?}"
        );
        assert!(
            !n.chars().any(|c| matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')),
            "bidi or zero-width character in {n:?}"
        );
        let p = dir.join(n);
        assert_eq!(p.parent(), Some(dir));
        let meta = std::fs::symlink_metadata(&p);
        assert!(
            meta.is_ok(),
            "listed {n:?} in {} cannot be looked up: {meta:?}",
            dir.display()
        );
    }
}

#[test]
fn hostile_and_odd_records_stay_inside_their_directories() {
    if !can_mount() {
        return;
    }
    let odd_day = days_ago(1);
    let odd_start = midnight(odd_day);
    let long_ascii = "A".repeat(300);
    let long_utf8 = "Ω".repeat(150); // 300 bytes
    let mut extra = vec![
        call(
            "7000000001",
            at(odd_start, 3600),
            40,
            Some("../../../../etc/passwd"),
            Some("80000001"),
        ),
        call(
            "7000000002",
            at(odd_start, 3700),
            40,
            Some("a/b\\c:d"),
            Some("80000002"),
        ),
        call(
            "7000000003",
            at(odd_start, 3800),
            40,
            Some("line\nbreak\ttab\u{1b}[31mred\u{7f}\u{0}nul"),
            Some("80000003"),
        ),
        call(
            "7000000004",
            at(odd_start, 3900),
            40,
            Some("\u{202e}3pm.exe\u{202c} \u{200f}rtl\u{2067}iso\u{2069}\u{feff}"),
            Some("80000004"),
        ),
        call(
            "7000000005",
            at(odd_start, 4000),
            40,
            Some(&long_ascii),
            Some("80000005"),
        ),
        call(
            "7000000006",
            at(odd_start, 4100),
            40,
            Some(&long_utf8),
            Some("80000006"),
        ),
        call(
            "7000000007",
            at(odd_start, 4200),
            40,
            Some(".."),
            Some("80000007"),
        ),
        call(
            "7000000008",
            at(odd_start, 4300),
            40,
            Some("."),
            Some("80000008"),
        ),
        // A 0-byte recording (an MP3 of 0 seconds).
        call(
            "7000000009",
            at(odd_start, 4400),
            0,
            Some("Empty"),
            Some("80000009"),
        ),
        // A session id that is not a plain token (a space, slashes): must still be reachable.
        call(
            "70 00/../0010",
            at(odd_start, 4500),
            30,
            Some("Odd Session"),
            Some("80000010"),
        ),
        // A huge recording: 2 GiB and a bit (MP3 at 4000 B/s), of a 150-hour call that has
        // ended (so it started a week ago, before the window: reached through by-recording).
        call(
            "7000000011",
            at(Timestamp::now(), -540_000 - 3600),
            540_000,
            Some("Huge"),
            Some("80000011"),
        ),
    ];
    // Every optional field missing.
    let mut sparse = call(
        "7000000012",
        at(odd_start, 4700),
        25,
        None,
        Some("80000012"),
    );
    sparse.sparse = true;
    extra.push(sparse);
    let mut cfg = settled_config(30, 4);
    cfg.extra_calls = extra;
    let m = mount(fault_stack(cfg, &Tune::default()));
    let fig = Figures::default();

    // The odd date: every name safe and reachable, every session directory too.
    let odir = m.p(&odd_day.to_string());
    // The session directories (the date's calls.csv beside them is checked in tests/tools.rs).
    let names: Vec<String> = names_in(&odir)
        .unwrap()
        .into_iter()
        .filter(|n| n != "calls.csv")
        .collect();
    check_names(&odir, &names);
    for n in &names {
        let sdir = odir.join(n);
        let inner = names_in(&sdir).unwrap_or_else(|e| panic!("{n:?}: {e}"));
        check_names(&sdir, &inner);
        assert!(inner.contains(&"call.json".to_string()));
    }
    for id in [
        "80000001", "80000002", "80000003", "80000004", "80000005", "80000006", "80000007",
        "80000008", "80000010", "80000012",
    ] {
        let sess = names.iter().find(|n| {
            std::fs::read_dir(odir.join(n)).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(&format!(" {id}.mp3"))
            })
        });
        let sess =
            sess.unwrap_or_else(|| panic!("recording {id} listed under {odd_day}: {names:?}"));
        let file = std::fs::read_dir(odir.join(sess))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(&format!(" {id}.mp3")))
            .unwrap();
        let want = m.emu().recording_bytes(id).unwrap();
        assert_eq!(fig.read_whole(&file, &want), Ok(()), "{}", file.display());
    }
    // by-session/ of an id with a space and slashes is refused cleanly (ENOENT), never escapes.
    let e = std::fs::metadata(m.p("by-session/70 00")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));

    // The 0-byte recording: size 0, reads empty.
    let empty = m.p("by-recording/80000009.mp3");
    assert_eq!(fig.read_whole(&empty, &[]), Ok(()));
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);

    // The 2 GiB recording: exact size after open, exact bytes at the start, the middle, past
    // 2^31 and at the end.
    let huge = m.p("by-recording/80000011.mp3");
    let len = m
        .emu()
        .calls()
        .iter()
        .find(|c| c.recording_id.as_deref() == Some("80000011"))
        .unwrap()
        .recording_len
        .unwrap();
    assert!(len > 2 << 30, "{len}");
    let mut f = std::fs::File::open(&huge).unwrap();
    assert_eq!(f.metadata().unwrap().len(), len);
    for off in [0, len / 2, (2u64 << 30) + 12345, len - 5000] {
        let want = m.emu().recording_range("80000011", off, 65536).unwrap();
        f.seek(SeekFrom::Start(off)).unwrap();
        let mut got = vec![0; want.len()];
        f.read_exact(&mut got).unwrap();
        assert!(got == want, "2 GiB recording at {off}");
        fig.reads.fetch_add(1, Ordering::Relaxed);
        fig.bytes.fetch_add(got.len() as u64, Ordering::Relaxed);
    }
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).unwrap();
    assert!(tail.is_empty(), "EOF after the last byte");
    drop(f);
    fig.print(
        "hostile_and_odd_records_stay_inside_their_directories",
        m.emu(),
        Some(&m.stack.client),
    );
    assert_no_foreign_panics();
}

fn days_ago(n: i64) -> jiff::civil::Date {
    Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date()
        - jiff::Span::new().days(n)
}

fn midnight(d: jiff::civil::Date) -> Timestamp {
    d.to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp()
}

fn at(base: Timestamp, secs: i64) -> Timestamp {
    base + jiff::SignedDuration::from_secs(secs)
}

/// An inbound call from +15550001111 with the given name and recording.
fn call(
    session: &str,
    start: Timestamp,
    duration_s: u32,
    name: Option<&str>,
    rec: Option<&str>,
) -> ExtraCall {
    ExtraCall {
        session_id: session.into(),
        start,
        duration_s,
        inbound: true,
        other_number: Some("+15550001111".into()),
        other_name: name.map(Into::into),
        recording_id: rec.map(Into::into),
        sparse: false,
    }
}

/// A small settled account plus `n` five-second calls with `name` on `day` (sessions `6…`,
/// recordings `9…`), spread evenly over the day.
fn crowded_config(day: jiff::civil::Date, n: u32, name: &str) -> Config {
    let spacing = (86_000 / i64::from(n.max(1))).max(1);
    let mut cfg = settled_config(20, 4);
    cfg.extra_calls = (0..n)
        .map(|i| {
            call(
                &format!("6{i:09}"),
                at(midnight(day), 60 + i64::from(i) * spacing),
                5,
                Some(name),
                Some(&format!("9{i:07}")),
            )
        })
        .collect();
    cfg
}

/// Regression: each lookup in a date built the names of all its sessions, so `ls -l` of a date
/// with 10,000 sessions took minutes (300 lookups took 19 s in a debug build). Also: the
/// 10,000 records come over 11 pages that overlap (duplicates across pages), and each session
/// is listed once.
#[test]
fn ls_l_of_a_date_with_10000_sessions_is_not_quadratic() {
    if !can_mount() {
        return;
    }
    let crowded = days_ago(2);
    let cfg = crowded_config(crowded, 10_000, "Crowd");
    let m = mount(fault_stack(cfg, &Tune::default()));
    // Pages overlap: the last 37 records of each page come again at the top of the next.
    m.emu().set_faults(Faults {
        page_overlap: 37,
        ..Faults::default()
    });
    let dir = m.p(&crowded.to_string());
    let names = names_in(&dir).unwrap();
    let unique: BTreeSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "duplicate directory names");
    assert_eq!(
        names.iter().filter(|n| n.contains(" Crowd 6")).count(),
        10_000,
        "10,000 sessions listed once each"
    );
    let s = m.emu().stats();
    assert!(s.call_log() >= 11, "the date came over many pages: {s:?}");
    // `ls -l`: one lookup per entry.
    let d = dir.clone();
    let (out, took) = bounded("ls-l-10000", Duration::from_secs(150), move || {
        Command::new("ls").arg("-l").arg(&d).output().unwrap()
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" Crowd 6"))
        .count();
    assert_eq!(lines, 10_000);
    eprintln!(
        "[faults] ls_l_of_a_date_with_10000_sessions_is_not_quadratic: ls -l of {} entries in {took:?}; {} call-log requests",
        names.len(),
        s.call_log()
    );
    assert_no_foreign_panics();
}

/// Regression: `--read-timeout` bounded a whole listing, so a date that needs more pages than the
/// rate limit sends within the timeout failed with EIO although every page came in time (on
/// RingCentral, any date of over 5,000 recordings: 10 pages a minute, 30 s). The bound is on
/// silence from the API now.
#[test]
fn a_date_listed_slower_than_the_read_timeout_succeeds_while_pages_flow() {
    if !can_mount() {
        return;
    }
    let crowded = days_ago(2);
    let mut cfg = crowded_config(crowded, 4500, "Queue");
    // One Heavy request a second: five pages take about five seconds.
    cfg.rate = RateLimits {
        window: Duration::from_secs(1),
        penalty: Duration::from_secs(2),
        heavy: 1,
        ..RateLimits::unlimited()
    };
    let tune = Tune {
        read_timeout: Duration::from_secs(2),
        ..Tune::default()
    };
    let m = mount(fault_stack(cfg, &tune));
    let dir = m.p(&crowded.to_string());
    let t = Instant::now();
    let names =
        names_in(&dir).unwrap_or_else(|e| panic!("listing failed after {:?}: {e}", t.elapsed()));
    let took = t.elapsed();
    assert_eq!(
        names.iter().filter(|n| n.contains(" Queue 6")).count(),
        4500
    );
    let s = m.emu().stats();
    assert!(
        took > tune.read_timeout,
        "the listing must outlast the read timeout for this test to mean anything: {took:?}"
    );
    assert_eq!(s.throttled, 0, "{s:?}");
    eprintln!(
        "[faults] {} sessions listed in {took:?} over {} call-log requests, read timeout {:?}",
        names.len(),
        s.call_log(),
        tune.read_timeout
    );
    assert_no_foreign_panics();
}

/// Regression: a session directory was looked up by the last word of its name, so a session id
/// that is not a plain token (a space, a `/` replaced in the name) could be listed but not
/// entered, and a name ending in another session's id led to that session.
#[test]
fn a_session_directory_with_an_odd_session_id_can_be_entered() {
    if !can_mount() {
        return;
    }
    let day = days_ago(1);
    let base = midnight(day);
    let mut cfg = settled_config(10, 3);
    cfg.extra_calls = vec![
        call(
            "7100000001",
            at(base, 7200),
            30,
            Some("Plain"),
            Some("81000001"),
        ),
        // Its name ends in the plain session's id.
        call(
            "x 7100000001",
            at(base, 7300),
            30,
            Some("Spaced"),
            Some("81000002"),
        ),
        call(
            "71 00/../0003",
            at(base, 7400),
            30,
            Some("Slashed"),
            Some("81000003"),
        ),
    ];
    let m = mount(fault_stack(cfg, &Tune::default()));
    let dir = m.p(&day.to_string());
    let names = names_in(&dir).unwrap();
    for (who, rec) in [
        ("Plain", "81000001"),
        ("Spaced", "81000002"),
        ("Slashed", "81000003"),
    ] {
        let name = names
            .iter()
            .find(|n| n.contains(who))
            .unwrap_or_else(|| panic!("{who} listed: {names:?}"));
        let inner =
            names_in(&dir.join(name)).unwrap_or_else(|e| panic!("{name:?} cannot be entered: {e}"));
        assert!(
            inner.iter().any(|n| n.ends_with(&format!(" {rec}.mp3"))),
            "{name:?} holds {rec}: {inner:?}"
        );
        assert_eq!(inner.len(), 2, "{name:?}: {inner:?}");
    }
    assert_no_foreign_panics();
}

/// Regression: a recording file was opened by the id at the end of its name, not by the entry's
/// recording. A recording id with a space ("9 81000011") ends in another recording's id, so its
/// file opened the other recording: wrong bytes.
#[test]
fn a_recording_id_ending_in_another_id_opens_its_own_bytes() {
    if !can_mount() {
        return;
    }
    let day = days_ago(1);
    let base = midnight(day);
    let mut cfg = settled_config(10, 3);
    cfg.extra_calls = vec![
        call(
            "7200000001",
            at(base, 7200),
            30,
            Some("Plain"),
            Some("81000011"),
        ),
        call(
            "7200000002",
            at(base, 7300),
            45,
            Some("Spaced"),
            Some("9 81000011"),
        ),
    ];
    let m = mount(fault_stack(cfg, &Tune::default()));
    let dir = m.p(&day.to_string());
    let session = names_in(&dir)
        .unwrap()
        .into_iter()
        .find(|n| n.contains("Spaced"))
        .expect("the session is listed");
    let file = names_in(&dir.join(&session))
        .unwrap()
        .into_iter()
        .find(|n| n.ends_with(".mp3"))
        .expect("its recording is listed");
    let got = std::fs::read(dir.join(&session).join(&file)).unwrap();
    let own = m.emu().recording_bytes("9 81000011").unwrap();
    let other = m.emu().recording_bytes("81000011").unwrap();
    assert!(got != other, "{file:?} opened the other recording");
    assert!(
        got == own,
        "{file:?}: {} bytes, want {}",
        got.len(),
        own.len()
    );
    assert_no_foreign_panics();
}

/// Regression: with the API hung, listing a date blocked for the client's stall timeout times its
/// retries (20 s with a 4 s read timeout in this suite; minutes with the defaults), and every
/// other listing queued behind it.
#[test]
fn listing_while_the_api_hangs_fails_within_the_read_timeout() {
    if !can_mount() {
        return;
    }
    let tune = Tune {
        read_timeout: Duration::from_secs(3),
        stall_timeout: Duration::from_secs(3),
        ..Tune::default()
    };
    let m = mount(fault_stack(settled_config(30, 6), &tune));
    m.emu().set_faults(Faults {
        hang: true,
        ..Faults::default()
    });
    let limit = tune.read_timeout + Duration::from_secs(6);
    let (a, b) = (m.p(&days_ago(2).to_string()), m.p(&days_ago(4).to_string()));
    let first = std::thread::Builder::new()
        .name("reader-ls-a".into())
        .spawn(move || {
            let t = Instant::now();
            (std::fs::read_dir(&a).map(|d| d.count()), t.elapsed())
        });
    std::thread::sleep(Duration::from_millis(200));
    // A second listing waits behind the first one's lock: bounded all the same.
    let (r, took) = bounded("ls-b", Duration::from_secs(120), move || {
        std::fs::read_dir(&b).map(|d| d.count())
    });
    assert_eq!(errno_of(&r), Some(libc::EIO), "{r:?}");
    assert!(took < limit, "the second listing blocked {took:?}");
    let (r, took) = first.unwrap().join().unwrap();
    assert_eq!(errno_of(&r), Some(libc::EIO), "{r:?}");
    assert!(took < limit, "the first listing blocked {took:?}");
    m.emu().set_faults(Faults::default());
    let a = m.p(&days_ago(2).to_string());
    assert!(
        eventually(Duration::from_secs(30), || std::fs::read_dir(&a).ok()).is_some(),
        "listing recovered"
    );
    assert_no_foreign_panics();
}

// ------------------------------------------------------------------ the real binary

fn ringfs_cmd(emu: &Emulator, cfg: &Config, mnt: &Path, state: &Path, log: &Path) -> Command {
    let mut c = ringfs_binary(emu, cfg, mnt, state, log);
    c.args(["--cache-size", "8M", "--read-timeout", "10"]);
    c
}

fn vm_kib(pid: i32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_binary_keeps_secrets_private_and_survives_sigkill() {
    if !can_mount() {
        return;
    }
    watch_panics();
    let rt = runtime();
    let mut cfg = settled_config(80, 4);
    // Tokens expire every 4 s: refreshes (and their tokens) happen during the run.
    cfg.access_ttl = Duration::from_secs(4);
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    emu.set_faults(Faults {
        drop_fraction: 0.2,
        error_5xx_fraction: 0.05,
        ..Faults::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state/tokens.json");
    let log = tmp.path().join("ringfs.log");
    let mp = MountPoint(
        tempfile::Builder::new()
            .prefix("ringfs-bin-")
            .tempdir()
            .unwrap(),
    );
    let mnt = mp.0.path().to_path_buf();
    let fig = Arc::new(Figures::default());

    // First mount, in the foreground.
    let child = ringfs_cmd(&emu, &cfg, &mnt, &state, &log)
        .arg("-f")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = Child(Some(child));
    assert!(
        eventually(Duration::from_secs(30), || is_mounted(&mnt).then_some(())).is_some(),
        "first mount came up"
    );
    let pid = first.pid();
    let rss0 = vm_kib(pid, "VmRSS:");

    // Read through it: exact bytes or clean errors.
    let mut files = Vec::new();
    for d in std::fs::read_dir(&mnt).unwrap() {
        let d = d.unwrap().path();
        if d.ends_with("by-session") || d.ends_with("by-recording") {
            continue;
        }
        match std::fs::read_dir(&d) {
            Ok(_) => files.extend(
                walk_files(&d)
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|e| e == "mp3"))
                    .map(|p| d.join(p)),
            ),
            Err(e) => fig.error("listing", &e),
        }
    }
    assert!(files.len() >= 20, "{} files", files.len());
    // The largest recording stays unread until the SIGKILL below.
    files.sort_by_key(|p| emu.recording_bytes(&recording_id_of(p)).unwrap().len());
    let big = files.pop().unwrap();
    let mut read_bytes = 0u64;
    for p in &files {
        let want = emu.recording_bytes(&recording_id_of(p)).unwrap();
        if fig.read_whole(p, &want).is_ok() {
            read_bytes += want.len() as u64;
        }
    }
    let hwm = vm_kib(pid, "VmHWM:");
    eprintln!(
        "[faults] ringfs binary: VmRSS {rss0} KiB after mount, VmHWM {hwm} KiB after reading {read_bytes} bytes through an 8 MiB cache"
    );
    // Budget 8 MiB plus a constant for the runtime, TLS, the listings and the allocator.
    assert!(
        read_bytes > 24 << 20,
        "read enough to overflow the cache: {read_bytes}"
    );
    assert!(
        hwm < rss0 + (8 << 10) + (40 << 10),
        "peak RSS {hwm} KiB vs {rss0} KiB at start and an 8 MiB cache"
    );

    // The token state file is private (and its directory).
    let meta = std::fs::metadata(&state).expect("state file written");
    assert_eq!(meta.mode() & 0o777, 0o600, "state file mode");
    assert_eq!(
        std::fs::metadata(state.parent().unwrap()).unwrap().mode() & 0o077,
        0,
        "state dir mode"
    );

    // Another user can neither list nor read the mount.
    for (tool, target) in [("ls", mnt.clone()), ("cat", files[0].clone())] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", tool])
            .arg(&target)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "nobody ran {tool} on the mount: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(err.contains("Permission denied"), "{tool} as nobody: {err}");
    }

    // SIGKILL during a read: the reader gets an error, not a hang, and the mount goes stale.
    emu.set_faults(Faults {
        max_bytes_per_sec: Some(100 << 10),
        ..Faults::default()
    });
    assert!(emu.recording_bytes(&recording_id_of(&big)).unwrap().len() > 1 << 20);
    let big2 = big.clone();
    let reader = std::thread::Builder::new()
        .name("reader-sigkill".into())
        .spawn(move || std::fs::read(&big2).map(|v| v.len()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    first.signal(libc::SIGKILL);
    assert!(first.wait(Duration::from_secs(10)).is_some(), "ringfs died");
    let (r, took) = bounded("read-after-sigkill", Duration::from_secs(30), move || {
        reader.join().unwrap()
    });
    eprintln!("[faults] read during SIGKILL: {r:?} after {took:?}");
    assert!(r.is_err(), "a read cut by SIGKILL fails: {r:?}");
    let mut stderr = String::new();
    first
        .0
        .as_mut()
        .unwrap()
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let stale = std::fs::metadata(&mnt);
    assert_eq!(
        errno_of(&stale),
        Some(libc::ENOTCONN),
        "a killed mount is stale: {stale:?}"
    );

    // Mounting again on the stale mount point says how to clear it.
    let out = ringfs_cmd(&emu, &cfg, &mnt, &state, &log).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "mounting on a stale mount point fails"
    );
    assert!(
        err.contains("umount -l") || err.contains("fusermount3 -u"),
        "says how to clear it: {err}"
    );

    // Cleared, it mounts again (in the background this time) and serves exact bytes.
    assert!(
        Command::new("umount")
            .arg("-l")
            .arg(&mnt)
            .status()
            .unwrap()
            .success()
    );
    emu.set_faults(Faults::default());
    let out = ringfs_cmd(&emu, &cfg, &mnt, &state, &log).output().unwrap();
    assert!(
        out.status.success(),
        "remount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&mnt));
    let want = emu.recording_bytes(&recording_id_of(&big)).unwrap();
    assert_eq!(fig.read_whole(&big, &want), Ok(()));
    // Unmount it the normal way; the daemon exits.
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    assert!(
        eventually(Duration::from_secs(10), || (!is_mounted(&mnt))
            .then_some(()))
        .is_some()
    );

    // No secret in any log line, at trace level, through faults, refreshes and a SIGKILL.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().count() > 100 && text.contains("TRACE"),
        "the log is at trace level ({} lines)",
        text.lines().count()
    );
    let mut secrets: Vec<(&str, String)> = vec![
        ("client secret", cfg.client_secret.clone()),
        ("JWT", cfg.jwt.clone()),
        // The emulator's access and refresh tokens all start with these.
        ("access token", "U0pDMDFQMDFBQ0Mw".into()),
        ("refresh token", "U0pDMDFQMDFSRUYw".into()),
    ];
    for (i, part) in cfg.jwt.split('.').enumerate() {
        secrets.push(if i == 0 {
            ("JWT header", part.into())
        } else {
            ("JWT part", part.into())
        });
    }
    for (what, s) in &secrets {
        if let Some(line) = text.lines().find(|l| l.contains(s.as_str())) {
            panic!("{what} in the log: {line}");
        }
    }
    for bad in [
        "Bearer ",
        "Basic ",
        "assertion=",
        "refresh_token=",
        "panicked",
    ] {
        assert!(
            !text.contains(bad),
            "{bad:?} in the log: {}",
            text.lines().find(|l| l.contains(bad)).unwrap()
        );
    }
    fig.print(
        "the_binary_keeps_secrets_private_and_survives_sigkill",
        &emu,
        None,
    );
    eprintln!(
        "[faults] log: {} lines checked for {} secrets",
        text.lines().count(),
        secrets.len()
    );
    assert_no_foreign_panics();
}

// ------------------------------------------------------------------ soak

#[test]
#[ignore = "ten minutes of mixed faults: cargo test --test faults soak -- --ignored (RINGFS_SOAK_SECS sets its length)"]
fn soak() {
    if !can_mount() {
        return;
    }
    let secs: u64 = std::env::var("RINGFS_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let mut cfg = settled_config(300, 10);
    cfg.access_ttl = Duration::from_secs(5);
    cfg.issue_refresh_tokens = false;
    cfg.rate = RateLimits {
        window: Duration::from_secs(2),
        penalty: Duration::from_secs(3),
        heavy: 20,
        ..RateLimits::unlimited()
    };
    let tune = Tune {
        cache_bytes: 16 << 20,
        read_timeout: Duration::from_secs(10),
        ..Tune::default()
    };
    let m = mount(fault_stack(cfg, &tune));
    let files = date_recordings(&m);
    let fig = Arc::new(Figures::default());
    let start = Instant::now();
    let mut round = 0u64;
    let menu = [
        Faults::default(),
        Faults {
            drop_fraction: 0.3,
            ..Faults::default()
        },
        Faults {
            max_bytes_per_sec: Some(512 << 10),
            drop_fraction: 0.1,
            ..Faults::default()
        },
        Faults {
            error_5xx_fraction: 0.3,
            ..Faults::default()
        },
        Faults {
            force_429_fraction: 0.1,
            force_429_retry_after: Some(2),
            ..Faults::default()
        },
        Faults {
            malformed_json_fraction: 0.5,
            page_overlap: 20,
            ..Faults::default()
        },
        Faults {
            hang: true,
            ..Faults::default()
        },
        Faults {
            unreachable: true,
            ..Faults::default()
        },
    ];
    while start.elapsed() < Duration::from_secs(secs) {
        round += 1;
        m.emu()
            .set_faults(menu[(round as usize) % menu.len()].clone());
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (path, id, _) = files[((round * 8 + i) as usize * 7919) % files.len()].clone();
                let want = m.emu().recording_bytes(&id).unwrap();
                let fig = fig.clone();
                std::thread::Builder::new()
                    .name(format!("reader-{i}"))
                    .spawn(move || {
                        let t = Instant::now();
                        let _ = fig.read_whole(&path, &want);
                        t.elapsed()
                    })
                    .unwrap()
            })
            .collect();
        for h in handles {
            let took = h.join().unwrap();
            assert!(took < Duration::from_secs(120), "a read took {took:?}");
        }
        let s = m.emu().stats();
        assert_eq!(s.retry_after_violations, 0, "{s:?}");
        let ms = m.stack.fs.media().stats();
        assert!(ms.peak_bytes <= tune.cache_bytes + (256 << 10), "{ms:?}");
    }
    m.emu().set_faults(Faults::default());
    let (path, id, _) = files[0].clone();
    let want = m.emu().recording_bytes(&id).unwrap();
    assert!(
        eventually(Duration::from_secs(60), || fig
            .read_whole(&path, &want)
            .ok())
        .is_some(),
        "recovered after the soak"
    );
    fig.print("soak", m.emu(), Some(&m.stack.client));
    assert_no_foreign_panics();
}

/// Regression: the SIGTERM handler was installed only after the parent had been told the mount
/// was ready, so a SIGTERM sent as soon as `ringfs` returned killed it and left a stale mount.
#[test]
fn sigterm_right_after_the_mount_returns_unmounts() {
    if !can_mount() {
        return;
    }
    watch_panics();
    let rt = runtime();
    let cfg = settled_config(10, 2);
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for round in 0..5 {
        let mp = MountPoint(
            tempfile::Builder::new()
                .prefix("ringfs-term-")
                .tempdir()
                .unwrap(),
        );
        let mnt = mp.0.path().to_path_buf();
        let out = ringfs_cmd(
            &emu,
            &cfg,
            &mnt,
            &tmp.path().join("tokens.json"),
            &tmp.path().join("log"),
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pgrep = Command::new("pgrep")
            .arg("-f")
            .arg(format!("ringfs {} {}", emu.api_url(), mnt.display()))
            .output()
            .unwrap();
        let pid: i32 = String::from_utf8_lossy(&pgrep.stdout)
            .lines()
            .next()
            .expect("daemon running")
            .trim()
            .parse()
            .unwrap();
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let gone = eventually(Duration::from_secs(15), || {
            (!is_mounted(&mnt)).then_some(())
        });
        assert!(
            gone.is_some(),
            "round {round}: SIGTERM left {} mounted",
            mnt.display()
        );
        let stale = std::fs::metadata(&mnt);
        assert!(
            stale.is_ok(),
            "round {round}: the mount point is usable again: {stale:?}"
        );
    }
    assert_no_foreign_panics();
}
