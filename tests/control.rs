//! `ringfs watch` and the mount's control socket, as a user runs them: the binary against a
//! socket served in-process, and against a real `ringfs demo` mount.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::{can_mount, eventually, force_unmount, is_mounted};
use ringfs::control::{self, Status};
use ringfs::fs::{Feed, LiveCounters, Readable};

const BIN: &str = env!("CARGO_BIN_EXE_ringfs");

/// Kills the watcher and unmounts, whatever happens in the test.
struct Cleanup {
    child: Option<Child>,
    mnt: Option<PathBuf>,
}
impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(m) = &self.mnt {
            force_unmount(m);
        }
    }
}

/// `ringfs watch MNT [--json]` with its own runtime directory; its stdout lines on a channel.
fn watcher(mnt: &Path, runtime: &Path, json: bool) -> (Child, mpsc::Receiver<String>) {
    let mut cmd = Command::new(BIN);
    cmd.arg("watch").arg(mnt).env("XDG_RUNTIME_DIR", runtime);
    if json {
        cmd.arg("--json");
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

#[test]
fn watch_prints_each_readable_path_and_exits_0_when_the_socket_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let runtime = tmp.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let dir = control::runtime_dir_with(Some(runtime.clone()), true).unwrap();
    let canonical = mnt.canonicalize().unwrap();
    let socket = dir.join(control::socket_name(&canonical));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, _) = tokio::sync::broadcast::channel::<Readable>(16);
    let guard = {
        let _in = rt.enter();
        let sub = tx.clone();
        let status = canonical.clone();
        control::serve_feed(
            &socket,
            Arc::new(move || sub.subscribe()),
            Arc::new(move || Status {
                mountpoint: status.clone(),
                events: Feed::Off,
                live: LiveCounters::default(),
                dates_in_memory: 0,
                progress: None,
            }),
        )
        .unwrap()
    };
    let mut clean = Cleanup {
        child: None,
        mnt: None,
    };
    for json in [false, true] {
        let (child, lines) = watcher(&mnt, &runtime, json);
        clean.child = Some(child);
        // Subscribed once the server counts a receiver.
        eventually(Duration::from_secs(10), || {
            (tx.receiver_count() > 0).then_some(())
        })
        .expect("the watcher subscribed");
        let r = Readable {
            path: "2026-12-01/10-00-00 in +15550001 42/2026-12-01 10-00-00 in 42.mp3".into(),
            record: serde_json::json!({"id": "L42", "sessionId": "42"}),
        };
        tx.send(r.clone()).unwrap();
        let line = lines.recv_timeout(Duration::from_secs(10)).expect("a line");
        if json {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v, r.record);
        } else {
            assert_eq!(Path::new(&line), canonical.join(&r.path));
        }
        if json {
            break;
        }
        // The first watcher goes; the second one sees the socket close.
        clean
            .child
            .take()
            .map(|mut c| c.kill().and_then(|_| c.wait()));
        eventually(Duration::from_secs(10), || {
            (tx.receiver_count() == 0).then_some(())
        })
        .expect("the server noticed the watcher left");
    }
    drop(guard);
    let mut child = clean.child.take().unwrap();
    let status = eventually(Duration::from_secs(10), || child.try_wait().unwrap())
        .expect("watch exited when the socket closed");
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "the socket is removed");
}

#[test]
fn watch_without_a_mount_fails_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("watch")
        .arg(tmp.path())
        .env("XDG_RUNTIME_DIR", tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no ringfs control socket"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_demo_mount_announces_new_calls_to_watch_and_its_end_ends_watch() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let runtime = tmp.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let mut clean = Cleanup {
        child: None,
        mnt: Some(mnt.clone()),
    };
    let out = Command::new(BIN)
        .args(["demo", mnt.to_str().unwrap()])
        .args(["--demo-live", "2", "--recent-ttl", "1", "--days", "3"])
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&mnt));
    let sockets: Vec<_> = std::fs::read_dir(runtime.join("ringfs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sockets[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Today's first listing is history; the calls that end after it are news.
    let today = jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::system())
        .date()
        .to_string();
    let day = mnt.join(&today);
    let _ = std::fs::read_dir(&day).map(|d| d.count());
    let (child, lines) = watcher(&mnt, &runtime, false);
    clean.child = Some(child);
    let line = eventually(Duration::from_secs(30), || {
        // Without events, a listing of today finds them (every --recent-ttl).
        let _ = std::fs::read_dir(&day).map(|d| d.count());
        lines.recv_timeout(Duration::from_millis(500)).ok()
    })
    .expect("a new call announced");
    let path = PathBuf::from(&line);
    // Under the date it started on: today, or yesterday for a call that ran over midnight.
    let date = path
        .strip_prefix(mnt.canonicalize().unwrap())
        .ok()
        .and_then(|p| p.iter().next())
        .and_then(|d| d.to_str()?.parse::<jiff::civil::Date>().ok());
    let yesterday = today
        .parse::<jiff::civil::Date>()
        .unwrap()
        .yesterday()
        .unwrap();
    assert!(
        date.is_some_and(|d| d.to_string() == today || d == yesterday),
        "{line}"
    );
    assert!(path.exists(), "{line} is readable");

    let out = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = clean.child.take().unwrap();
    let status = eventually(Duration::from_secs(10), || child.try_wait().unwrap())
        .expect("watch exited when the mount went away");
    assert!(status.success(), "{status:?}");
    let gone = eventually(Duration::from_secs(10), || {
        std::fs::read_dir(runtime.join("ringfs"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
            .then_some(())
    });
    assert!(gone.is_some(), "the socket is removed at unmount");
}
