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

#[test]
fn ordinary_programs_leave_no_warning_in_the_log() {
    if !can_mount() {
        return;
    }
    let cfg = settled(12, 2);
    let rt = runtime();
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mp = MountPoint::temp("ringfs-quiet-");
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
    let mp = MountPoint::temp("ringfs-mount8-");
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
    // Every subcommand has its page.
    for sub in ["cache", "watch", "status", "archive", "completions", "man"] {
        assert!(
            text.contains(&format!("ringfs-{sub}(1)")),
            "ringfs-{sub}(1) missing"
        );
    }
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

/// `GET /metrics` over a plain TCP connection: the body of a 200.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    body.to_string()
}

/// Parses the text format strictly: every line is `# HELP name ...`, `# TYPE name kind` or
/// `name{labels} value`; returns the samples by `name{labels}`.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut typed = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut w = rest.split(' ');
            let (kw, name) = (w.next().unwrap(), w.next().unwrap());
            assert!(kw == "HELP" || kw == "TYPE", "{line}");
            if kw == "TYPE" {
                let kind = w.next().unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(typed.insert(name.to_string()), "{name} typed twice");
            }
            continue;
        }
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let name = key.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        if let Some(labels) = key.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').unwrap();
                    assert!(
                        !k.is_empty() && v.starts_with('"') && v.ends_with('"'),
                        "{line}"
                    );
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "{line}: no # TYPE before it");
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        samples.insert(key.to_string(), v);
    }
    samples
}

#[test]
fn metrics_are_scraped_during_a_mount_and_move() {
    if !can_mount() {
        return;
    }
    let cfg = settled(6, 2);
    let rt = runtime();
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mp = MountPoint::temp("ringfs-metrics-");
    let mnt = mp.0.path();
    run_ok(quiet_binary(&emu, &cfg, mnt, tmp.path()).args(["--metrics", "127.0.0.1:0"]));
    let log = std::fs::read_to_string(tmp.path().join("ringfs.log")).unwrap();
    let addr = log
        .lines()
        .find_map(|l| l.split("metrics on http://").nth(1))
        .and_then(|r| r.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("the log says where the metrics are: {log}"))
        .to_string();
    let before = parse_exposition(&scrape(&addr));
    let get = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    let file = walk_files(mnt)
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "mp3") && !f.starts_with("by-recording"))
        .expect("a recording");
    let bytes = std::fs::read(mnt.join(&file)).unwrap();
    // Again, past the kernel's page cache: the memory tier answers.
    let f = std::fs::File::open(mnt.join(&file)).unwrap();
    unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    drop(f);
    std::fs::read(mnt.join(&file)).unwrap();
    let after = parse_exposition(&scrape(&addr));
    let moved = |k: &str| get(&after, k) - get(&before, k);
    assert!(
        moved("ringfs_api_requests_total{group=\"Heavy\",outcome=\"ok\"}") >= 2.0,
        "a listing and a download: {after:?}"
    );
    assert!(moved("ringfs_downloaded_bytes_total") >= bytes.len() as f64);
    assert!(moved("ringfs_media_first_byte_seconds_count") >= 1.0);
    assert!(moved("ringfs_media_download_seconds_count") >= 1.0);
    assert_eq!(
        get(&after, "ringfs_media_download_seconds_bucket{le=\"+Inf\"}"),
        get(&after, "ringfs_media_download_seconds_count")
    );
    let memory = moved("ringfs_cache_hits_total{tier=\"memory\"}")
        + moved("ringfs_cache_misses_total{tier=\"memory\"}");
    assert!(memory >= 1.0, "reads reached the memory tier: {after:?}");
    for key in [
        "ringfs_api_throttled_total",
        "ringfs_api_retries_total",
        "ringfs_cache_hits_total{tier=\"memory\"}",
        "ringfs_cache_hit_ratio{tier=\"memory\"}",
        "ringfs_cache_bytes{tier=\"disk\"}",
    ] {
        assert!(after.contains_key(key), "{key} missing");
    }
    let ratio = get(&after, "ringfs_cache_hit_ratio{tier=\"memory\"}");
    assert!((0.0..=1.0).contains(&ratio));
    eprintln!(
        "[tools] metrics: +{} Heavy ok, +{} bytes, first byte sum {}s",
        moved("ringfs_api_requests_total{group=\"Heavy\",outcome=\"ok\"}"),
        moved("ringfs_downloaded_bytes_total"),
        get(&after, "ringfs_media_first_byte_seconds_sum")
    );
}

fn exit_of(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    (out.status.code().unwrap_or(-1), err)
}

#[test]
fn failures_a_service_manager_sees_have_their_own_exit_status() {
    if !Path::new("/dev/fuse").exists() {
        // Without FUSE every start fails with 4 before anything else is checked.
        let (code, _) = exit_of(Command::new(env!("CARGO_BIN_EXE_ringfs")).args(["demo", "/"]));
        assert_eq!(code, 4);
        return;
    }
    let bin = env!("CARGO_BIN_EXE_ringfs");
    let tmp = tempfile::tempdir().unwrap();
    let clean = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("XDG_CACHE_HOME", tmp.path().join("cache"))
            .env("XDG_STATE_HOME", tmp.path().join("state"));
        c
    };
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mnt_s = mnt.to_str().unwrap();
    let (code, err) = exit_of(&mut clean(&["demo", "/nonexistent/ringfs-mnt"]));
    assert_eq!(code, 3, "{err}");
    let (code, err) = exit_of(&mut clean(&["demo", mnt_s, "--days", "0"]));
    assert_eq!(code, 2, "{err}");
    let (code, err) = exit_of(&mut clean(&["ringcentral", mnt_s]));
    assert_eq!(code, 6, "no credentials: {err}");
    assert!(err.contains("RC_"), "{err}");
    if !can_mount() {
        return;
    }
    // Nothing listens on port 1: the API cannot be reached (after the client's retries).
    let mut c = clean(&["http://127.0.0.1:1", mnt_s, "--no-state-file"]);
    c.env("RC_CLIENT_ID", "id")
        .env("RC_CLIENT_SECRET", "s")
        .env("RC_JWT", "j");
    let t = std::time::Instant::now();
    let (code, err) = exit_of(&mut c);
    assert_eq!(code, 7, "{err}");
    eprintln!("[tools] unreachable API reported in {:?}", t.elapsed());
    // Refused credentials, from the daemon through the parent.
    let cfg = settled(2, 1);
    let rt = runtime();
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    let _g = MountPoint(tempfile::tempdir_in(tmp.path()).unwrap());
    let mut c = clean(&[
        &emu.api_url(),
        _g.0.path().to_str().unwrap(),
        "--no-state-file",
    ]);
    c.env("RC_CLIENT_ID", "wrong")
        .env("RC_CLIENT_SECRET", "wrong")
        .env("RC_JWT", "wrong");
    let (code, err) = exit_of(&mut c);
    assert_eq!(code, 6, "{err}");
    assert!(!err.contains("wrong"), "{err}");
    // Already mounted.
    run_ok(&mut clean(&[
        "demo",
        _g.0.path().to_str().unwrap(),
        "-o",
        "demo_live=0",
    ]));
    let (code, err) = exit_of(&mut clean(&[
        "demo",
        _g.0.path().to_str().unwrap(),
        "-o",
        "demo_live=0",
    ]));
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("already"), "{err}");
}

#[test]
fn the_log_file_is_private() {
    if !can_mount() {
        return;
    }
    let cfg = settled(2, 1);
    let rt = runtime();
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mp = MountPoint::temp("ringfs-log-");
    run_ok(&mut quiet_binary(&emu, &cfg, mp.0.path(), tmp.path()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tmp.path().join("ringfs.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// The fenced block of `lang` that follows `heading` in the README.
fn readme_block(heading: &str, lang: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let at = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has {heading:?}"));
    let fence = format!("```{lang}\n");
    let start = readme[at..].find(&fence).unwrap() + at + fence.len();
    let end = readme[start..].find("```").unwrap() + start;
    readme[start..end].to_string()
}

#[test]
fn the_readmes_systemd_unit_verifies() {
    if !have("systemd-analyze") {
        eprintln!("skipped: systemd-analyze is not installed (package systemd)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // The unit names the installed binary; here the one just built. Its man page is installed
    // in a temporary MANPATH, since `Documentation=man:ringfs(1)` is checked with man.
    let unit = readme_block("### Running as a systemd service", "ini")
        .replace("/usr/local/bin/ringfs", env!("CARGO_BIN_EXE_ringfs"));
    assert!(unit.contains("Type=forking") && unit.contains("RestartPreventExitStatus="));
    let path = tmp.path().join("ringfs.service");
    std::fs::write(&path, &unit).unwrap();
    let man = tmp.path().join("man/man1");
    std::fs::create_dir_all(&man).unwrap();
    ringfs_out(&["man", "--dir", man.to_str().unwrap()]);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", tmp.path().join("man"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {err}"
    );
    // The exit statuses it does not retry are the ones the README's table lists.
    let prevent = unit
        .lines()
        .find_map(|l| l.strip_prefix("RestartPreventExitStatus="))
        .unwrap();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for code in prevent.split_whitespace() {
        assert!(
            readme.contains(&format!("\n| {code} | ")),
            "exit status {code} in the table"
        );
    }
}
