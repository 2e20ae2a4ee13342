//! The `ringfs` command as a user runs it: daemonizing, `-o` options, `mount -t fuse.ringfs`,
//! clean unmounts on signals and `umount`, and one-line errors.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{can_mount, eventually, force_unmount, is_mounted};

const BIN: &str = env!("CARGO_BIN_EXE_ringfs");

/// Unmounts and waits for the daemon to go away, whatever happens in the test.
struct Guard<'a>(&'a Path);
impl Drop for Guard<'_> {
    fn drop(&mut self) {
        force_unmount(self.0);
    }
}

fn ringfs(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RINGFS_LOG", "ringfs=debug")
        .output()
        .unwrap()
}

fn daemon_pid(mnt: &Path) -> Option<i32> {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(format!("{BIN} demo {}", mnt.display()))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn demo_mount_returns_when_ready_and_umount_ends_it() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path();
    let _g = Guard(mnt);
    let out = ringfs(&["demo", mnt.to_str().unwrap(), "-o", "demo_live=0,days=10"]);
    assert!(
        out.status.success(),
        "ringfs demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(mnt), "returned before the mount was ready");
    // Immediately usable.
    // (A count, not the entries: a `DirEntry` keeps its directory open, and umount would be busy.)
    let dates = std::fs::read_dir(mnt).unwrap().count();
    assert_eq!(dates, 10 + 2);
    let bytes = std::fs::read(mnt.join("by-recording/44444444.mp3")).unwrap();
    assert!(bytes.len() > 1000);
    let pid = daemon_pid(mnt).expect("daemon running");
    // umount ends the process.
    let out = Command::new("umount").arg(mnt).output().unwrap();
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gone = eventually(Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z "))
        .then_some(())
    });
    assert!(gone.is_some(), "daemon still running after umount");
}

/// Mounts the demo in the background at `mnt`, SIGTERMs the daemon with a process whose working
/// directory is inside the mount (`busy`) or none, and says whether the mount went away.
fn sigterm_unmounts(mnt: &std::path::Path, busy: bool) -> bool {
    let out = ringfs(&["demo", mnt.to_str().unwrap(), "--demo-live", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = daemon_pid(mnt).expect("daemon running");
    let mut inside = busy.then(|| {
        Command::new("sleep")
            .arg("30")
            .current_dir(mnt)
            .spawn()
            .unwrap()
    });
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let unmounted = eventually(Duration::from_secs(10), || (!is_mounted(mnt)).then_some(()));
    if let Some(p) = inside.as_mut() {
        let _ = p.kill();
        let _ = p.wait();
    }
    unmounted.is_some()
}

#[test]
fn sigterm_unmounts_cleanly() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _g = Guard(dir.path());
    assert!(
        sigterm_unmounts(dir.path(), false),
        "SIGTERM did not unmount"
    );
}

#[test]
fn sigterm_detaches_a_mount_in_use() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _g = Guard(dir.path());
    assert!(
        sigterm_unmounts(dir.path(), true),
        "SIGTERM left a busy mount mounted"
    );
}

#[test]
fn errors_are_one_clear_line() {
    let out = ringfs(&["demo", "/nonexistent/ringfs-mnt"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["ringcentral", dir.path().to_str().unwrap()])
        .env_remove("RC_CLIENT_ID")
        .env_remove("RC_CLIENT_SECRET")
        .env_remove("RC_JWT")
        .env_remove("RINGCENTRAL_CLIENT_ID")
        .env_remove("RINGCENTRAL_CLIENT_SECRET")
        .env_remove("RINGCENTRAL_JWT_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RC_"), "names the missing variables: {err}");

    let out = ringfs(&["gopher://x", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown source"));

    // Bad credentials against a reachable API: the parent reports the child's reason.
    let emu = std::process::Command::new(env!("CARGO_BIN_EXE_ringfs-emulator"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut emu = KillOnDrop(emu);
    let mut stdout = std::io::BufReader::new(emu.0.stdout.take().unwrap());
    let mut api = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut api).unwrap();
    let _g = Guard(dir.path());
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([api.trim(), dir.path().to_str().unwrap(), "--no-state-file"])
        // Its default cache directory in the test's own temporary directory, not in ~/.cache.
        .env("XDG_CACHE_HOME", cache.path())
        .env("RC_CLIENT_ID", "wrong")
        .env("RC_CLIENT_SECRET", "wrong")
        .env("RC_JWT", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("logging in"), "{err}");
    assert!(
        !err.contains("wrong"),
        "a secret leaked into the error: {err}"
    );
    assert!(!is_mounted(dir.path()));
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn stale_mount_is_explained() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path();
    let _g = Guard(mnt);
    let out = ringfs(&["demo", mnt.to_str().unwrap(), "--demo-live", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = daemon_pid(mnt).expect("daemon running");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let stale = eventually(Duration::from_secs(10), || {
        (std::fs::metadata(mnt).err()?.raw_os_error() == Some(libc::ENOTCONN)).then_some(())
    });
    assert!(stale.is_some(), "expected a stale mount after SIGKILL");
    let out = ringfs(&["demo", mnt.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stale") && err.contains("umount -l"), "{err}");
    // Cleared as the message says, it mounts again.
    assert!(
        Command::new("umount")
            .arg("-l")
            .arg(mnt)
            .status()
            .unwrap()
            .success()
    );
    let out = ringfs(&["demo", mnt.to_str().unwrap(), "--demo-live", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read_dir(mnt).unwrap().count() > 2);
}

#[test]
fn mount_t_fuse_ringfs_works() {
    if !can_mount() {
        return;
    }
    if !Path::new("/sbin/mount.fuse3").exists() && !Path::new("/usr/sbin/mount.fuse3").exists() {
        panic!("mount.fuse3 (Debian's fuse3) is needed for this test");
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path();
    let _g = Guard(mnt);
    // mount(8) runs helpers with a fixed, safe PATH, so `ringfs` must be installed where that
    // PATH looks (as `cargo install` puts it in ~/.cargo/bin, users link it, see the README).
    // The test links the built binary into /usr/local/bin unless a ringfs is already there.
    let link = Path::new("/usr/local/bin/ringfs");
    let _link = if link.symlink_metadata().is_err() {
        std::os::unix::fs::symlink(BIN, link)
            .expect("link ringfs into /usr/local/bin (run as root)");
        Some(RemoveOnDrop(link.to_path_buf()))
    } else {
        None
    };
    let path = std::env::var("PATH").unwrap_or_default();
    let out = Command::new("mount")
        .args([
            "-t",
            "fuse.ringfs",
            "-o",
            "days=5,demo_live=0,umask=022",
            "demo",
        ])
        .arg(mnt)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount -t fuse.ringfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(mnt));
    assert_eq!(std::fs::read_dir(mnt).unwrap().count(), 5 + 2);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(mnt).unwrap().mode() & 0o777,
        0o555,
        "umask=022 from -o"
    );
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `ringfs cache info|clear` over a demo mount's `--cache-dir`.
fn cache_cmd(args: &[&str]) -> (bool, String, String) {
    let out = ringfs(&[&["cache"], args].concat());
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cache_info_and_clear_and_clear_refused_while_mounted() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let c = cache.to_str().unwrap();
    let (ok, out, err) = cache_cmd(&["info", "--cache-dir", c]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("cache directory: {c}")), "{out}");
    assert!(out.contains("recordings: 0"), "{out}");
    assert!(out.contains("limit: 10.0 GiB"), "{out}");
    let (ok, out, _) = cache_cmd(&["clear", "--cache-dir", c]);
    assert!(ok && out.contains("nothing to clear"), "{out}");

    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _g = Guard(&mnt);
    let out = ringfs(&[
        "demo",
        mnt.to_str().unwrap(),
        "-o",
        "demo_live=0,days=10",
        "--cache-dir",
        c,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(mnt.join("by-recording/44444444.mp3")).unwrap();
    let info = eventually(Duration::from_secs(10), || {
        let (_, out, _) = cache_cmd(&["info", "--cache-dir", c, "--disk-cache-size", "2G"]);
        out.contains("recordings: 1 (1 complete, 0 partial)")
            .then_some(out)
    })
    .expect("info shows the recording read");
    assert!(info.contains(&format!("({} bytes)", bytes.len())), "{info}");
    assert!(info.contains("limit: 2.0 GiB"), "{info}");
    assert!(info.contains("in use by a running mount"), "{info}");

    let (ok, _, err) = cache_cmd(&["clear", "--cache-dir", c]);
    assert!(!ok, "clear while mounted is refused");
    assert!(err.contains("in use by a running mount"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(std::fs::read(mnt.join("by-recording/44444444.mp3")).unwrap() == bytes);

    let pid = daemon_pid(&mnt).expect("daemon running");
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    let gone = eventually(Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z "))
        .then_some(())
    });
    assert!(gone.is_some(), "daemon still running after umount");
    let (ok, out, err) = cache_cmd(&["clear", "--cache-dir", c]);
    assert!(ok, "{err}");
    assert!(out.contains("removed 1 recordings"), "{out}");
    let (_, out, _) = cache_cmd(&["info", "--cache-dir", c]);
    assert!(out.contains("call index: 0 calls"), "{out}");
    assert!(
        out.contains("recordings: 0 (0 complete, 0 partial)"),
        "{out}"
    );
    assert!(!out.contains("in use"), "{out}");
    assert_eq!(
        std::fs::read_dir(cache.join("recordings")).unwrap().count(),
        0
    );
}

#[test]
fn cache_commands_find_the_mounts_default_directory_and_are_in_the_help() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["cache", "info", "https://platform.example.com/"])
        .env("XDG_CACHE_HOME", tmp.path())
        .env("RC_CLIENT_ID", "the-client")
        .env("RC_CLIENT_SECRET", "s")
        .env("RC_JWT", "j")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir =
        tmp.path()
            .join("ringfs")
            .join(ringfs::cli::account_name(&ringfs::api::Credentials {
                server_url: "https://platform.example.com".into(),
                client_id: "the-client".into(),
                client_secret: "s".into(),
                jwt: "j".into(),
            }));
    assert!(
        stdout.contains(&format!("cache directory: {}", dir.display())),
        "{stdout}"
    );
    let out = Command::new(BIN)
        .args(["cache", "info"])
        .env_remove("RC_CLIENT_ID")
        .env_remove("RINGCENTRAL_CLIENT_ID")
        .output()
        .unwrap();
    assert!(!out.status.success(), "no account, no default directory");

    let help = String::from_utf8_lossy(&ringfs(&["--help"]).stdout).into_owned();
    assert!(
        help.contains("ringfs cache info") && help.contains("ringfs cache clear"),
        "{help}"
    );
    assert!(help.contains("--no-passthrough"), "{help}");
    let help = String::from_utf8_lossy(&ringfs(&["cache", "--help"]).stdout).into_owned();
    assert!(
        help.contains("info") && help.contains("clear") && help.contains("--cache-dir"),
        "{help}"
    );
}

#[test]
fn cache_clear_forgets_the_call_index_too() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    // A cache as a mount leaves it: the store's directory, and calls in its index.
    let store =
        ringfs::store::DiskStore::open(&dir, ringfs::store::StoreConfig::default()).unwrap();
    let meta = ringfs::store::MetaStore::open(&dir, Duration::from_secs(90 * 86_400)).unwrap();
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let calls = (0..3)
        .map(|i| ringfs::store::StoredCall {
            id: format!("L{i}"),
            session_id: format!("{i}"),
            start_ms: now_ms - 3_600_000,
            json: "{}".into(),
            recordings: Vec::new(),
        })
        .collect();
    meta.record(calls, Vec::new());
    meta.shutdown();
    store.shutdown();
    drop(store);
    assert_eq!(ringfs::store::MetaStore::count(&dir), Some(3));
    let c = dir.to_str().unwrap();
    let (_, out, _) = cache_cmd(&["info", "--cache-dir", c]);
    assert!(out.contains("call index: 3 calls"), "{out}");
    let (ok, out, err) = cache_cmd(&["clear", "--cache-dir", c]);
    assert!(ok, "{err}");
    assert!(out.contains("and 3 calls of the call index"), "{out}");
    assert_eq!(ringfs::store::MetaStore::count(&dir), Some(0));
}
