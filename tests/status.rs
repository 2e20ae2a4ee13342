//! `ringfs status` against a real mount of the `ringfs` binary over the in-process emulator
//! with a small Heavy limit: what it shows while a `cp -r` of a date waits on the rate limit,
//! whether its estimate of the end holds, and that only the mounting user may ask.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Child, can_mount, eventually, force_unmount, have, is_mounted, quick_config};
use ringfs::emulator::{Emulator, RateLimits};

const BIN: &str = env!("CARGO_BIN_EXE_ringfs");

/// Unmounts whatever happens in the test.
struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        force_unmount(&self.0);
    }
}

/// Fields drop in order: the mount goes before its directory is removed.
struct Setup {
    _unmount: Unmount,
    tmp: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
    emu: Emulator,
}

impl Setup {
    fn mnt(&self) -> PathBuf {
        self.tmp.path().join("mnt")
    }
    fn runtime(&self) -> PathBuf {
        self.tmp.path().join("run")
    }
    /// `ringfs status ARGS` as the mounting user.
    fn status(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("status")
            .args(args)
            .env("XDG_RUNTIME_DIR", self.runtime())
            .output()
            .unwrap()
    }
    fn status_json(&self) -> serde_json::Value {
        let out = self.status(&[self.mnt().to_str().unwrap(), "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// The emulator (Heavy: `heavy` requests per `window_s` seconds) and the `ringfs` binary
/// mounted over it, with its runtime and cache directories in a temporary directory.
fn setup(calls: usize, heavy: u32, window_s: u64) -> Setup {
    let tmp = tempfile::Builder::new()
        .prefix("ringfs-status-")
        .tempdir()
        .unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    std::fs::create_dir(tmp.path().join("run")).unwrap();
    let mut cfg = quick_config(calls, 2);
    cfg.rate = RateLimits {
        window: Duration::from_secs(window_s),
        penalty: Duration::from_secs(window_s),
        heavy,
        ..RateLimits::default()
    };
    let rt = common::runtime();
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    let unmount = Unmount(mnt.clone());
    let out = Command::new(BIN)
        .arg(emu.api_url())
        .arg(&mnt)
        .args(["--no-state-file", "--days", "2"])
        .env("XDG_RUNTIME_DIR", tmp.path().join("run"))
        .env("XDG_CACHE_HOME", tmp.path().join("cache"))
        .env("RC_CLIENT_ID", &cfg.client_id)
        .env("RC_CLIENT_SECRET", &cfg.client_secret)
        .env("RC_JWT", &cfg.jwt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&mnt));
    Setup {
        tmp,
        _rt: rt,
        emu,
        _unmount: unmount,
    }
}

/// The date directory with the most session directories.
fn biggest_date(mnt: &Path) -> (PathBuf, usize) {
    std::fs::read_dir(mnt)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("20"))
        .map(|p| {
            // Session directories only (not `calls.csv`).
            let n = std::fs::read_dir(&p)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
                .count();
            (p, n)
        })
        .max_by_key(|(_, n)| *n)
        .unwrap()
}

#[test]
fn status_during_a_throttled_copy_shows_the_queue_and_its_estimate_holds() {
    if !can_mount() {
        return;
    }
    // 6 Heavy requests per 3 s. 90 calls over two days put some 30 recordings in yesterday
    // (all 24 hours of it are in the data set whatever the time of day): five windows or so.
    let s = setup(90, 6, 3);
    let (date, sessions) = biggest_date(&s.mnt());
    assert!(sessions >= 20, "{sessions} sessions in {}", date.display());
    let dest = s.tmp.path().join("copy");
    let start = Instant::now();
    let mut cp = Child(Some(
        Command::new("cp")
            .arg("-r")
            .arg(&date)
            .arg(&dest)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let mut samples: Vec<(Duration, serde_json::Value)> = Vec::new();
    let mut text = None;
    let finished = loop {
        if let Some(st) = cp.0.as_mut().unwrap().try_wait().unwrap() {
            assert!(st.success(), "cp failed");
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "cp took too long"
        );
        let at = start.elapsed();
        samples.push((at, s.status_json()));
        if text.is_none() && samples.len() == 3 {
            let out = s.status(&[]);
            assert!(out.status.success());
            text = Some(String::from_utf8(out.stdout).unwrap());
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    // The queue was seen, with downloads queued and a rate.
    let queued = |v: &serde_json::Value| {
        let q = &v["queue"];
        q["downloads_waiting"].as_u64().unwrap()
            + q["downloads_in_flight"].as_u64().unwrap()
            + q["unfetched"].as_u64().unwrap()
    };
    assert!(
        samples.iter().any(|(_, v)| queued(v) > 0),
        "no sample saw a queued download: {samples:?}"
    );
    // The estimate given early, while most of the date is still to be fetched, holds within
    // 20 % of the time that was actually left.
    let (at, early) = samples
        .iter()
        .find(|(_, v)| v["queue"]["unfetched"].as_u64().unwrap() >= 12)
        .expect("an early sample with most of the date still to fetch");
    let predicted = early["queue"]["all_done_in_secs"].as_f64().unwrap();
    let left = (finished - *at).as_secs_f64();
    eprintln!(
        "estimate at {:.2}s: {predicted:.2}s left; actually {left:.2}s (cp took {:.2}s, {} recordings)",
        at.as_secs_f64(),
        finished.as_secs_f64(),
        early["queue"]["dates"][0]["recordings"]
    );
    assert!(
        left >= 5.0,
        "the copy must be long enough to judge: {left:.2}s"
    );
    assert!(
        (predicted - left).abs() <= 0.2 * left,
        "estimated {predicted:.2}s, took {left:.2}s: {early}"
    );
    let heavy = early["rate"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "Heavy")
        .unwrap();
    assert_eq!(heavy["limit"], 6, "{heavy}");
    assert_eq!(heavy["window_secs"], 3.0, "{heavy}");
    assert!(heavy["learned"].as_bool().unwrap());
    assert!(early["uptime_secs"].as_f64().unwrap() > 0.0);
    assert_eq!(
        early["account"]["server"],
        s.emu.api_url().trim_start_matches("http://")
    );
    // The pacer kept the copy under the limit: not one 429.
    assert_eq!(s.emu.stats().throttled, 0);

    // The text summary, without a mount point (the only mount of this user).
    let text = text.unwrap();
    for key in [
        "ringfs on ",
        "  account ",
        "  events ",
        "  Heavy     ",
        " used in the 3s window, ",
        "  queue     ",
        "  memory    ",
        "  disk      ",
    ] {
        assert!(text.contains(key), "{key:?} not in:\n{text}");
    }
    eprintln!("{text}");
    // After the copy: nothing queued, every recording of the date on disk.
    let after = s.status_json();
    assert_eq!(queued(&after), 0, "{after}");
    let disk = &after["disk_cache"];
    assert!(
        disk["recordings"].as_u64().unwrap() >= sessions as u64,
        "{disk}"
    );
    let rendered = s.status(&[s.mnt().to_str().unwrap()]);
    let rendered = String::from_utf8(rendered.stdout).unwrap();
    assert!(rendered.contains("no download queued"), "{rendered}");
}

#[test]
fn watch_refreshes_and_only_the_mounting_user_can_ask() {
    if !can_mount() {
        return;
    }
    let s = setup(10, 10, 60);
    // --watch redraws until interrupted.
    let mut w = Child(Some(
        Command::new(BIN)
            .args(["status", "--watch", "0.2"])
            .arg(s.mnt())
            .env("XDG_RUNTIME_DIR", s.runtime())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(Duration::from_millis(1500));
    w.signal(libc::SIGINT);
    let out = w.0.take().unwrap().wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let redraws = text.matches("\x1b[H\x1b[2J").count();
    assert!(redraws >= 3, "{redraws} redraws:\n{text}");
    assert!(text.contains("ringfs on "), "{text}");

    // The socket is 0600 in a 0700 directory.
    use std::os::unix::fs::PermissionsExt;
    let dir = s.runtime().join("ringfs");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let socket = eventually(Duration::from_secs(5), || {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "sock"))
    })
    .unwrap();
    assert_eq!(mode(&socket), 0o600);

    // Another user cannot connect: first stopped by the directory, then, with the way to it
    // opened, by the socket's own mode.
    // The system's python (one under root's home is not for other users).
    let python = "/usr/bin/python3";
    if !(have("setpriv") && Path::new(python).exists()) {
        eprintln!("skipped the other-user check: needs setpriv and {python}");
        return;
    }
    let connect_as_nobody = || {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                python,
                "-c",
            ])
            .arg(
                "import socket,sys\n\
                 s=socket.socket(socket.AF_UNIX)\n\
                 try:\n s.connect(sys.argv[1]); s.sendall(b'{\"op\":\"status\"}\\n'); \
                 print(s.recv(100000).decode())\n\
                 except OSError as e:\n print('refused', e.errno); sys.exit(3)",
            )
            .arg(&socket)
            .output()
            .unwrap()
    };
    let open_up =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    // The temporary directories are root's 0700: let the other user walk to the socket.
    for p in [s.tmp.path(), &s.runtime()] {
        open_up(p, 0o711);
    }
    let out = connect_as_nobody();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    open_up(&dir, 0o711);
    let out = connect_as_nobody();
    open_up(&dir, 0o700);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("refused 13"),
        "EACCES: {out:?}"
    );
    // The mounting user still can.
    assert!(s.status_json()["uptime_secs"].as_f64().is_some());
}

#[test]
fn status_without_a_mount_fails_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [vec![], vec![tmp.path().to_str().unwrap()]] {
        let out = Command::new(BIN)
            .arg("status")
            .args(&args)
            .env("XDG_RUNTIME_DIR", tmp.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("ringfs"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// Without a kernel: which dates count as being read through, and what is left in them.
#[test]
fn a_date_counts_as_being_read_once_two_of_its_recordings_were_opened() {
    use ringfs::fs::Kind;
    let s = common::stack(quick_config(40, 2), |_| {});
    let fs = s.fs.clone();
    s.rt.block_on(async move {
        // The date with the most sessions, and its recording files.
        let mut best = (0, Vec::new());
        for d in fs.opendir(1).await.unwrap() {
            if !d.name.starts_with("20") {
                continue;
            }
            let mut files = Vec::new();
            for session in fs.opendir(d.ino).await.unwrap() {
                if session.kind != Kind::Dir {
                    continue;
                }
                for f in fs.opendir(session.ino).await.unwrap() {
                    if f.name.ends_with(".mp3") || f.name.ends_with(".wav") {
                        files.push(f.ino);
                    }
                }
            }
            if files.len() > best.1.len() {
                best = (d.ino, files);
            }
        }
        let files = best.1;
        assert!(files.len() >= 4, "{} recordings", files.len());
        let within = Duration::from_secs(60);
        assert!(fs.reading(within).is_empty(), "listing is not reading");
        // One recording opened twice: a player, not a copy.
        for _ in 0..2 {
            let o = fs.open(files[0], false).await.unwrap();
            fs.release(o.fh);
        }
        assert!(fs.reading(within).is_empty(), "{:?}", fs.reading(within));
        let o = fs.open(files[1], false).await.unwrap();
        fs.release(o.fh);
        let r = fs.reading(within);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].recordings, files.len());
        assert_eq!(
            r[0].unfetched,
            files.len() - 2,
            "the two opened are fetched"
        );
        // Long enough ago, it is not being read any more.
        assert!(fs.reading(Duration::ZERO).is_empty());
    });
}
