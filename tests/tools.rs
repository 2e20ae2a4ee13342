//! The tools around a mount, through the kernel and the real binary: extended attributes
//! (`getfattr`), each date's `calls.csv` (read by Python's `csv`), a log without warnings after
//! what ordinary programs do, and how the system sees the mount (`/proc/mounts`, `findmnt`).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use ringfs::emulator::{CallInfo, Config, Emulator};

/// A settled emulator: every call visible and fetchable at once.
fn settled(calls: usize, days: u32) -> Config {
    let mut cfg = quick_config(calls, days);
    cfg.record_delay = Duration::ZERO;
    cfg.recording_delay = Duration::ZERO;
    cfg
}

/// The recorded calls the emulator shows on `date` (UTC), by recording id.
fn recorded_on(emu: &Emulator, date: &str) -> BTreeMap<String, CallInfo> {
    let now = jiff::Timestamp::now();
    emu.calls()
        .into_iter()
        .filter(|c| c.visible_at <= now && c.start.to_string().starts_with(date))
        .filter_map(|c| Some((c.recording_id.clone()?, c)))
        .collect()
}

/// `getfattr -d` of `path`: name -> value (getfattr prints text values quoted, others base64).
fn getfattr(path: &Path) -> BTreeMap<String, String> {
    let out = Command::new("getfattr")
        .args(["-d", "--absolute-names", "-e", "text"])
        .arg(path)
        .output()
        .expect("getfattr (package attr)");
    assert!(
        out.status.success(),
        "getfattr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect()
}

fn text(n: &Option<String>) -> String {
    n.clone().unwrap_or_default()
}

#[test]
fn getfattr_shows_the_call_and_calls_csv_matches_the_call_log() {
    if !can_mount() {
        return;
    }
    assert!(
        have("getfattr") && have("python3"),
        "getfattr (apt-get install attr) and python3 are needed"
    );
    let m = mount(stack(settled(40, 3), |_| {}));
    let dates: Vec<String> = names_in(m.path())
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("20"))
        .collect();
    let mut rows_seen = 0;
    for date in &dates {
        let want = recorded_on(m.emu(), date);
        let listed = m.emu().stats().call_log();
        let csv = m.p(&format!("{date}/calls.csv"));
        let size = std::fs::metadata(&csv).unwrap().len();
        let bytes = std::fs::read(&csv).unwrap();
        assert_eq!(
            size,
            bytes.len() as u64,
            "{date}: stat size is the content's"
        );
        assert!(bytes.ends_with(b"\r\n"), "CRLF line ends");
        // Python's csv module, a reader that is not ours, parses it.
        let out = Command::new("python3")
            .args([
                "-c",
                "import csv,json,sys\n\
                 rows=list(csv.DictReader(open(sys.argv[1],newline='',encoding='utf-8')))\n\
                 print(json.dumps(rows))",
            ])
            .arg(&csv)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<BTreeMap<String, String>> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rows.len(), want.len(), "{date}: one row per recorded call");
        for row in &rows {
            let call = &want[&row["recording_id"]];
            assert_eq!(row["session_id"], call.session_id);
            // A party that is an extension has no phone number in the emulator's summary; the
            // CSV then shows its extension number.
            for (col, n) in [("from", &call.from_number), ("to", &call.to_number)] {
                match n {
                    Some(n) => assert_eq!(&row[col], n, "{col}"),
                    None => assert!(!row[col].is_empty(), "{col}: the extension number"),
                }
            }
            assert_eq!(row["from_name"], text(&call.from_name));
            assert_eq!(row["to_name"], text(&call.to_name));
            assert_eq!(row["duration"], call.duration_s.to_string());
            let direction = if call.inbound { "Inbound" } else { "Outbound" };
            assert_eq!(row["direction"], direction);
            let start: jiff::Timestamp = row["start"].parse().unwrap();
            assert_eq!(start, call.start);
            // The path leads to the recording, whose attributes say the same.
            let file = m.p(&format!("{date}/{}", row["path"]));
            let x = getfattr(&file);
            let get = |k: &str| x.get(&format!("user.ringcentral.{k}")).cloned();
            assert_eq!(get("recording_id").as_deref(), Some(&*row["recording_id"]));
            assert_eq!(get("session_id"), Some(call.session_id.clone()));
            assert_eq!(
                get("telephony_session_id"),
                Some(call.telephony_session_id.clone())
            );
            assert_eq!(get("direction").as_deref(), Some(direction));
            assert_eq!(get("duration"), Some(call.duration_s.to_string()));
            assert_eq!(
                get("start_time").map(|s| s.parse::<jiff::Timestamp>().unwrap()),
                Some(call.start)
            );
            assert!(
                !x.keys().any(|k| !k.starts_with("user.ringcentral.")),
                "{x:?}"
            );
            let dir = getfattr(file.parent().unwrap());
            assert_eq!(
                dir.get("user.ringcentral.session_id"),
                Some(&call.session_id)
            );
            assert!(!dir.contains_key("user.ringcentral.recording_id"));
            rows_seen += 1;
        }
        assert!(
            m.emu().stats().call_log() <= listed + 1,
            "calls.csv and the attributes cost at most the date's listing"
        );
    }
    assert!(rows_seen > 0, "the emulator had recorded calls");
    // The content type shows once a recording was read.
    let date = &dates[dates.len() - 1];
    let want = recorded_on(m.emu(), date);
    let (id, call) = want
        .iter()
        .next()
        .expect("a recorded call on the oldest date");
    let files = walk_files(&m.p(date));
    let rel = files
        .iter()
        .find(|f| recording_id_of(f) == *id && !f.ends_with("calls.csv"))
        .unwrap();
    let file = m.p(date).join(rel);
    std::fs::read(&file).unwrap();
    assert_eq!(
        getfattr(&file)
            .get("user.ringcentral.content_type")
            .cloned(),
        call.content_type.map(String::from)
    );
    // Other namespaces are empty, not an error the program reports.
    let out = Command::new("getfattr")
        .args(["-n", "security.selinux"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No such attribute"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The real binary over `emu` at the default log level, logging to `log`.
fn quiet_binary(emu: &Emulator, cfg: &Config, mnt: &Path, tmp: &Path) -> Command {
    let mut c = ringfs_binary(
        emu,
        cfg,
        mnt,
        &tmp.join("tokens.json"),
        &tmp.join("ringfs.log"),
    );
    c.env_remove("RINGFS_LOG")
        .arg("--cache-dir")
        .arg(tmp.join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ordinary_programs_leave_no_warning_in_the_log() {
    if !can_mount() {
        return;
    }
    let cfg = settled(12, 2);
    let rt = runtime();
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mp = MountPoint(
        tempfile::Builder::new()
            .prefix("ringfs-quiet-")
            .tempdir()
            .unwrap(),
    );
    let mnt = mp.0.path();
    run_ok(&mut quiet_binary(&emu, &cfg, mnt, tmp.path()));
    assert!(is_mounted(mnt));
    let walk = run_ok(Command::new("find").arg(mnt).args(["-type", "f"]));
    let file = walk
        .lines()
        .find(|l| l.ends_with(".mp3") && !l.contains("by-"))
        .expect("a recording")
        .to_string();
    let copy = tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    let session = Path::new(&file).parent().unwrap();
    for cmd in [
        Command::new("cat").arg(&file).stdout(Stdio::null()),
        Command::new("getfattr").args(["-R", "-d"]).arg(mnt),
        Command::new("ls").arg("-lR").arg(mnt),
        Command::new("stat").arg(&file).arg(mnt),
        Command::new("stat").arg("-f").arg(mnt),
        Command::new("du").arg("-s").arg(mnt),
        Command::new("test").arg("-r").arg(&file),
        Command::new("cp").arg("-a").arg(session).arg(&copy),
        Command::new("rsync").arg("-aX").arg(session).arg(&copy),
        Command::new("ffprobe").args(["-v", "error"]).arg(&file),
        Command::new("file").arg(&file),
    ] {
        if have(cmd.get_program().to_str().unwrap()) {
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    run_ok(Command::new("umount").arg(mnt));
    eventually(Duration::from_secs(10), || (!is_mounted(mnt)).then_some(()));
    let log = std::fs::read_to_string(tmp.path().join("ringfs.log")).unwrap();
    assert!(log.contains("mounted"), "the log is written: {log}");
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("Not Implemented"))
        .collect();
    assert!(bad.is_empty(), "warnings in the log:\n{}", bad.join("\n"));
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_system_knows_it_as_fuse_ringfs_through_mount_and_findmnt() {
    if !can_mount() {
        return;
    }
    let mp = MountPoint(
        tempfile::Builder::new()
            .prefix("ringfs-mount8-")
            .tempdir()
            .unwrap(),
    );
    let mnt = mp.0.path();
    // mount(8) runs helpers with a fixed PATH (no ~/.cargo/bin): the README installs ringfs
    // into /usr/local/bin; the test links the built binary there unless one is installed.
    let link = Path::new("/usr/local/bin/ringfs");
    let _link = if link.symlink_metadata().is_err() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ringfs"), link).unwrap();
        Some(RemoveOnDrop(link.to_path_buf()))
    } else {
        None
    };
    // What an fstab line passes: generic options and x-systemd.* ones are accepted, ignored.
    run_ok(
        Command::new("mount")
            .args(["-t", "fuse.ringfs", "-o"])
            .arg("ro,nodev,nosuid,_netdev,nofail,x-systemd.automount,days=3,demo_live=0")
            .arg("demo")
            .arg(mnt),
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(&*mnt.to_string_lossy()))
        .expect("in /proc/mounts");
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(
        (fields[0], fields[2]),
        ("ringfs:demo", "fuse.ringfs"),
        "{line}"
    );
    assert!(fields[3].split(',').any(|o| o == "ro"), "{line}");
    let found = run_ok(Command::new("findmnt").args(["-n", "-t", "fuse.ringfs", "-o", "TARGET"]));
    assert!(
        found.lines().any(|l| Path::new(l.trim()) == mnt),
        "findmnt -t fuse.ringfs: {found}"
    );
    assert_eq!(names_in(mnt).unwrap().len(), 3 + 2);
    run_ok(Command::new("umount").arg(mnt));
    assert!(eventually(Duration::from_secs(10), || (!is_mounted(mnt)).then_some(())).is_some());
}

fn ringfs_out(args: &[&str]) -> String {
    run_ok(Command::new(env!("CARGO_BIN_EXE_ringfs")).args(args))
}

#[test]
fn the_man_page_renders_and_documents_every_option_once() {
    let page = ringfs_out(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH ringfs 1"),
        "{}",
        &page[..200]
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("ringfs.1");
    std::fs::write(&file, &page).unwrap();
    // groff with every warning on: the roff is clean. (`man` itself when installed.)
    assert!(
        have("groff"),
        "groff is needed (apt-get install groff-base)"
    );
    let out = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).replace(['\u{2010}', '\u{2212}'], "-");
    // Every long flag of --help is in the page, documented once.
    let help = ringfs_out(&["--help"]);
    let flags: std::collections::BTreeSet<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches([',', '.', ')', ':']))
        .filter(|w| {
            w.chars()
                .skip(2)
                .all(|c| c.is_ascii_lowercase() || c == '-')
        })
        .collect();
    assert!(flags.len() > 20, "{flags:?}");
    for flag in &flags {
        assert!(text.contains(flag), "{flag} missing from the man page");
    }
    assert!(text.contains("REQUEST COSTS") && text.contains("ringfs-cache(1)"));
    if have("man") {
        let out = Command::new("man")
            .args(["-P", "cat", "-l"])
            .arg(&file)
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("--disk-cache-size"));
    }
    // Every page, for a system's man directory.
    let dir = tmp.path().join("man1");
    std::fs::create_dir(&dir).unwrap();
    ringfs_out(&["man", "--dir", dir.to_str().unwrap()]);
    for page in [
        "ringfs.1",
        "ringfs-cache.1",
        "ringfs-cache-info.1",
        "ringfs-completions.1",
    ] {
        assert!(dir.join(page).exists(), "{page}");
    }
}

#[test]
fn bash_zsh_and_fish_load_the_completions() {
    let bin = env!("CARGO_BIN_EXE_ringfs");
    let out = run_ok(Command::new("bash").arg("-c").arg(format!(
        "source <('{bin}' completions bash) && complete -p ringfs"
    )));
    assert!(out.contains("_ringfs ringfs"), "{out}");
    // The script offers the flags and subcommands.
    let script = ringfs_out(&["completions", "bash"]);
    for word in ["--cache-dir", "--days", "cache", "completions", "man"] {
        assert!(script.contains(word), "{word}");
    }
    for (shell, check) in [("zsh", "zsh -n"), ("fish", "fish --no-execute")] {
        let script = ringfs_out(&["completions", shell]);
        assert!(script.contains("disk-cache-size"), "{shell}");
        let program = check.split(' ').next().unwrap();
        if have(program) {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), &script).unwrap();
            run_ok(
                Command::new("sh")
                    .arg("-c")
                    .arg(format!("{check} {}", file.path().display())),
            );
        }
    }
    let bad = Command::new(bin)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
