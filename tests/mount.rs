//! Real mounts (root, /dev/fuse) of the in-process emulator, read through the kernel with
//! `std::fs` and with real programs. Request costs are read from the emulator's counters.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use jiff::Timestamp;

/// Recording ids the call log shows now (visible, with a recording, in the window of `days`).
fn visible_recordings(
    m: &Mounted,
    days: u32,
    settled: Duration,
) -> BTreeMap<String, ringfs::emulator::CallInfo> {
    let now = Timestamp::now();
    let w = ringfs::catalog::Window::last_days(days, jiff::tz::TimeZone::UTC);
    let (first, _) = w.bounds(now);
    let cut = now - jiff::SignedDuration::try_from(settled).unwrap();
    m.emu()
        .calls()
        .into_iter()
        .filter(|c| c.recording_id.is_some() && c.fetchable_at <= cut && c.visible_at <= cut)
        .filter(|c| w.date_of(c.start) >= first)
        .map(|c| (c.recording_id.clone().unwrap(), c))
        .collect()
}

fn recordings_under(dir: &Path) -> Vec<std::path::PathBuf> {
    walk_files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "mp3" || e == "wav"))
        .collect()
}

#[test]
fn seed_call_is_reachable_three_ways() {
    if !can_mount() {
        return;
    }
    let m = mount(stack(quick_config(40, 5), |_| {}));
    // by-recording first: the media URL built from the id (approach 2), one media request.
    let direct = m.emu().recording_bytes("44444444").unwrap();
    let before = m.emu().stats();
    let by_rec = std::fs::read(m.p("by-recording/44444444.mp3")).unwrap();
    assert_eq!(by_rec, direct, "by-recording bytes");
    let after = m.emu().stats();
    assert_eq!(
        after.media() - before.media(),
        1,
        "one media request for lookup + read"
    );
    assert_eq!(
        after.call_log(),
        before.call_log(),
        "no call-log request for a recording id"
    );

    // by-session: one call-log query by sessionId (approach 1).
    let entries: Vec<String> = std::fs::read_dir(m.p("by-session/1234567890"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(entries.contains(&"call.json".to_string()), "{entries:?}");
    let rec = entries
        .iter()
        .find(|n| n.ends_with(" 44444444.mp3"))
        .expect("recording in by-session");
    assert!(rec.contains("in +14155550100 John Smith"), "{rec}");
    let bytes = std::fs::read(m.p(&format!("by-session/1234567890/{rec}"))).unwrap();
    assert_eq!(bytes, direct);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.p("by-session/1234567890/call.json")).unwrap())
            .unwrap();
    assert_eq!(json["sessionId"], "1234567890");
    assert_eq!(json["recording"]["id"], "44444444");
    let s = m.emu().stats();
    assert_eq!(
        s.call_log() - after.call_log(),
        1,
        "one call-log request for by-session"
    );
    assert_eq!(
        s.media(),
        after.media(),
        "second read of the seed recording came from the cache"
    );

    // And in its date directory.
    let seed = m
        .emu()
        .calls()
        .into_iter()
        .find(|c| c.session_id == "1234567890")
        .unwrap();
    let date = seed.start.to_zoned_datetime(jiff::tz::TimeZone::UTC).date();
    let day = m.p(&date.to_string());
    let session_dir = std::fs::read_dir(&day)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(" 1234567890"))
        .expect("seed session in its date");
    assert!(
        session_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .contains(" in +14155550100 John Smith ")
    );
}

#[test]
fn unknown_ids_and_probes_cost_nothing_twice() {
    if !can_mount() {
        return;
    }
    let m = mount(stack(quick_config(20, 3), |_| {}));
    let s0 = m.emu().stats();
    for probe in [
        ".DS_Store",
        "._x",
        ".Trash-0",
        ".hidden",
        "autorun.inf",
        ".xdg-volume-info",
        "by-session/.DS_Store",
    ] {
        let e = std::fs::metadata(m.p(probe)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{probe}");
    }
    assert_eq!(
        std::fs::metadata(m.p("1999-01-01"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    assert_eq!(
        std::fs::metadata(m.p("not-a-date"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    let s1 = m.emu().stats();
    assert_eq!(s1.by_endpoint, s0.by_endpoint, "probes spent requests");

    assert_eq!(
        std::fs::metadata(m.p("by-session/999000999"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    assert_eq!(
        std::fs::metadata(m.p("by-recording/999000999.mp3"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    let s2 = m.emu().stats();
    assert!(s2.call_log() - s1.call_log() <= 1);
    // Asked again: the negative cache answers.
    let _ = std::fs::metadata(m.p("by-session/999000999"));
    let _ = std::fs::metadata(m.p("by-recording/999000999.mp3"));
    assert_eq!(
        m.emu().stats().by_endpoint,
        s2.by_endpoint,
        "negative cache"
    );
    // Ids that cannot be ids are refused without a request.
    assert!(std::fs::metadata(m.p("by-session/..%2f")).is_err());
    assert_eq!(m.emu().stats().by_endpoint, s2.by_endpoint);
}

#[test]
fn read_only_everywhere() {
    if !can_mount() {
        return;
    }
    let m = mount(stack(quick_config(10, 2), |_| {}));
    let rofs =
        |r: std::io::Result<()>| assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    rofs(std::fs::write(m.p("new.txt"), b"x"));
    rofs(std::fs::create_dir(m.p("newdir")));
    rofs(std::fs::write(m.p("by-recording/44444444.mp3"), b"x"));
    rofs(std::fs::remove_file(m.p("by-recording/44444444.mp3")));
    rofs(std::fs::rename(m.p("by-session"), m.p("x")));
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(m.p("by-recording/44444444.mp3"));
    assert_eq!(f.unwrap_err().raw_os_error(), Some(libc::EROFS));
}

#[test]
fn private_by_default() {
    if !can_mount() {
        return;
    }
    let m = mount(stack(quick_config(10, 2), |_| {}));
    let root = std::fs::metadata(m.path()).unwrap();
    assert_eq!(root.mode() & 0o777, 0o500);
    assert_eq!(root.uid(), unsafe { libc::getuid() });
    let f = std::fs::metadata(m.p("by-recording/44444444.mp3")).unwrap();
    assert_eq!(f.mode() & 0o777, 0o400);
    // A second, unprivileged user can neither list nor read.
    if have("setpriv") {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "ls"])
            .arg(m.path())
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "nobody listed the mount: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(m.p("by-recording/44444444.mp3"))
            .output()
            .unwrap();
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "nobody read a recording"
        );
    } else {
        panic!("setpriv (util-linux) is needed for this test");
    }
}

#[test]
fn every_recording_is_byte_identical_and_costs_are_minimal() {
    if !can_mount() {
        return;
    }
    let days = 10;
    let m = mount(stack(quick_config(90, days), |_| {}));
    std::thread::sleep(Duration::from_millis(1200)); // let calls that end around start settle
    let expected = visible_recordings(&m, days, Duration::from_millis(0));

    // A full walk: call-log requests <= 2 * ceil(N/1000) + 2.
    let s0 = m.emu().stats();
    let files = recordings_under(m.path());
    let s1 = m.emu().stats();
    let date_files: Vec<_> = files
        .iter()
        .filter(|p| !p.starts_with("by-session") && !p.starts_with("by-recording"))
        .collect();
    let n = date_files.len() as u64;
    assert!(n >= 30, "too few recordings listed: {n}");
    let cl = s1.call_log() - s0.call_log();
    assert!(
        cl <= 2 * n.div_ceil(1000) + 2,
        "full walk spent {cl} call-log requests for {n} recordings"
    );
    assert_eq!(s1.media(), s0.media(), "listing spent media requests");
    let listed: BTreeSet<String> = date_files.iter().map(|p| recording_id_of(p)).collect();
    for (id, call) in &expected {
        if call.visible_at < Timestamp::now() - jiff::SignedDuration::from_secs(2) {
            assert!(listed.contains(id), "recording {id} of {call:?} not listed");
        }
    }

    // Read everything fetchable: byte-identical, one media request each.
    let now = Timestamp::now();
    let readable: Vec<_> = date_files
        .iter()
        .filter(|p| {
            let id = recording_id_of(p);
            m.emu()
                .calls()
                .iter()
                .any(|c| c.recording_id.as_deref() == Some(&id) && c.fetchable_at < now)
        })
        .collect();
    let s2 = m.emu().stats();
    let mut bytes_total = 0;
    for p in &readable {
        let got = std::fs::read(m.path().join(p)).unwrap();
        let id = recording_id_of(p);
        let want = m.emu().recording_bytes(&id).unwrap();
        assert!(
            got == want,
            "{} differs ({} vs {} bytes)",
            p.display(),
            got.len(),
            want.len()
        );
        let meta = std::fs::metadata(m.path().join(p)).unwrap();
        assert_eq!(meta.len(), want.len() as u64, "size after open is exact");
        bytes_total += got.len();
    }
    let s3 = m.emu().stats();
    assert_eq!(
        s3.media() - s2.media(),
        readable.len() as u64,
        "one media request per recording"
    );
    assert_eq!(s3.call_log(), s2.call_log());
    assert!(bytes_total > 0);

    // Read again: everything is within the cache budget (512 MiB in these tests), so the
    // kernel's page cache or ours serves it, zero requests.
    assert!(
        (bytes_total as u64) < 512 << 20,
        "{bytes_total} bytes do not fit the budget"
    );
    for p in &readable {
        let _ = std::fs::read(m.path().join(p)).unwrap();
    }
    assert_eq!(
        m.emu().stats().by_endpoint,
        s3.by_endpoint,
        "second read spent requests"
    );
    eprintln!(
        "full walk of {days} days: {n} recordings listed with {cl} call-log requests; {} read ({bytes_total} bytes) with {} media requests; re-read with 0",
        readable.len(),
        s3.media() - s2.media()
    );
}

#[test]
fn listing_one_date_costs_at_most_one_request() {
    if !can_mount() {
        return;
    }
    let m = mount(stack(quick_config(300, 30), |_| {}));
    let s0 = m.emu().stats();
    let root: Vec<String> = std::fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(root.len(), 30 + 2, "{root:?}");
    assert!(root.contains(&"by-session".to_string()) && root.contains(&"by-recording".to_string()));
    assert_eq!(
        m.emu().stats().by_endpoint,
        s0.by_endpoint,
        "listing the root spent requests"
    );
    let date = (Timestamp::now() - jiff::SignedDuration::from_hours(24 * 10))
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date();
    let out = Command::new("ls")
        .arg("-l")
        .arg(m.p(&date.to_string()))
        .output()
        .unwrap();
    assert!(out.status.success());
    let s1 = m.emu().stats();
    assert_eq!(s1.call_log() - s0.call_log(), 1, "cold ls -l of a date");
    // Warm: nothing.
    let out = Command::new("ls")
        .arg("-lR")
        .arg(m.p(&date.to_string()))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        m.emu().stats().by_endpoint,
        s1.by_endpoint,
        "warm ls -lR of a date"
    );
}

#[test]
fn real_programs_read_through_the_mount() {
    if !can_mount() {
        return;
    }
    let mut cfg = quick_config(30, 4);
    cfg.format = ringfs::emulator::AudioFormat::Mixed;
    let m = mount(stack(cfg, |_| {}));
    std::thread::sleep(Duration::from_millis(1200));
    let dir = m.p("by-session/1234567890");
    let seed = recordings_under(&dir);
    assert_eq!(seed.len(), 1);
    let file = dir.join(&seed[0]);
    for tool in ["ffprobe", "sox", "mpg123", "rsync"] {
        assert!(
            have(tool),
            "{tool} is needed (apt-get install ffmpeg sox libsox-fmt-mp3 mpg123 rsync)"
        );
    }
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration,format_name",
            "-of",
            "json",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probe: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let seed_call = m
        .emu()
        .calls()
        .into_iter()
        .find(|c| c.session_id == "1234567890")
        .unwrap();
    assert!(
        (duration - seed_call.duration_s as f64).abs() < 1.0,
        "ffprobe {duration} vs {}",
        seed_call.duration_s
    );
    let out = Command::new("sox")
        .arg(&file)
        .args(["-n", "stat"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sox: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // cp -r and rsync -a of a whole date directory: identical trees.
    let date = seed_call
        .start
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();
    let src = m.p(&date);
    // The account mixes MP3 and WAV (a format setting changed over time), which only each
    // response's Content-Type reveals: a file listed as `.mp3` turns `.wav` once it is opened.
    // Open every file once so the names settle, then copy.
    for rel in walk_files(&src) {
        let _ = std::fs::File::open(src.join(rel)).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let st = Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(tmp.path().join("cp"))
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("rsync")
        .arg("-a")
        .arg(format!("{}/", src.display()))
        .arg(tmp.path().join("rsync"))
        .status()
        .unwrap();
    assert!(st.success());
    let files = walk_files(&src);
    assert!(!files.is_empty());
    for rel in &files {
        let orig = std::fs::read(src.join(rel)).unwrap();
        if rel.extension().is_some_and(|e| e == "mp3" || e == "wav") {
            let want = m.emu().recording_bytes(&recording_id_of(rel)).unwrap();
            assert!(
                orig == want,
                "{} differs from a direct download",
                rel.display()
            );
            let kind = if want.starts_with(b"RIFF") {
                "wav"
            } else {
                "mp3"
            };
            assert_eq!(
                rel.extension().unwrap(),
                kind,
                "extension follows the content type: {}",
                rel.display()
            );
        }
        assert!(
            std::fs::read(tmp.path().join("cp").join(rel)).unwrap() == orig,
            "cp: {}",
            rel.display()
        );
        assert!(
            std::fs::read(tmp.path().join("rsync").join(rel)).unwrap() == orig,
            "rsync: {}",
            rel.display()
        );
    }
    assert_eq!(walk_files(&tmp.path().join("cp")), files);
    assert_eq!(walk_files(&tmp.path().join("rsync")), files);
}

#[test]
fn seeks_and_partial_reads() {
    if !can_mount() {
        return;
    }
    let mut cfg = quick_config(10, 2);
    cfg.format = ringfs::emulator::AudioFormat::Wav;
    let m = mount(stack(cfg, |_| {}));
    let want = m.emu().recording_bytes("44444444").unwrap();
    let mut f = std::fs::File::open(m.p("by-recording/44444444.wav")).unwrap();
    let mut buf = vec![0; 1000];
    for off in [want.len() as u64 / 2, 10, want.len() as u64 - 500, 0] {
        f.seek(SeekFrom::Start(off)).unwrap();
        let n = f.read(&mut buf).unwrap();
        assert!(n > 0);
        assert_eq!(&buf[..n], &want[off as usize..off as usize + n], "at {off}");
    }
    f.seek(SeekFrom::Start(want.len() as u64)).unwrap();
    assert_eq!(f.read(&mut buf).unwrap(), 0, "EOF");
}

#[test]
fn names_are_safe_and_time_zones_move_calls() {
    if !can_mount() {
        return;
    }
    let days = 90;
    let m = mount(stack(quick_config(400, days), |fc| {
        fc.window = ringfs::catalog::Window::last_days(
            days,
            jiff::tz::TimeZone::get("America/New_York").unwrap(),
        );
    }));
    let tz = jiff::tz::TimeZone::get("America/New_York").unwrap();
    let calls = m.emu().calls();
    // A call whose caller name has a '/': listed, with the slash neutralised.
    let slashed = calls
        .iter()
        .find(|c| {
            c.recording_id.is_some()
                && (c.from_name.as_deref().unwrap_or("").contains('/')
                    || c.to_name.as_deref().unwrap_or("").contains('/'))
        })
        .expect("the emulator has a name with '/'");
    let date = slashed.start.to_zoned_datetime(tz.clone()).date();
    let dir = m.p(&date.to_string());
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.ends_with(&format!(" {}", slashed.session_id))),
        "{names:?}"
    );
    // Every name in every date is within the limits.
    for d in std::fs::read_dir(m.path()).unwrap() {
        let d = d.unwrap().path();
        if d.ends_with("by-session") || d.ends_with("by-recording") {
            continue;
        }
        for e in std::fs::read_dir(&d).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(
                name.len() <= 255 && !name.contains(':') && !name.chars().any(char::is_control),
                "{name:?}"
            );
        }
    }
    // Calls near UTC midnight land on the New York date of their start.
    let near_midnight: Vec<_> = calls
        .iter()
        .filter(|c| c.recording_id.is_some() && c.visible_at < Timestamp::now())
        .filter(|c| {
            let t = c.start.to_zoned_datetime(jiff::tz::TimeZone::UTC);
            t.hour() == 23 && t.minute() >= 59 || t.hour() == 0 && t.minute() == 0
        })
        .collect();
    assert!(
        !near_midnight.is_empty(),
        "the emulator has calls at UTC midnight edges"
    );
    for c in near_midnight {
        let local = c.start.to_zoned_datetime(tz.clone());
        let dir = m.p(&local.date().to_string());
        let prefix = local.strftime("%H-%M-%S").to_string();
        let found = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .any(|n| n.starts_with(&prefix) && n.ends_with(&format!(" {}", c.session_id)));
        assert!(
            found,
            "call {} at {} not in {}",
            c.session_id,
            local,
            dir.display()
        );
    }
}

#[test]
fn a_new_call_appears_in_today_without_a_remount() {
    if !can_mount() {
        return;
    }
    let mut cfg = quick_config(10, 2);
    cfg.live = Some(Duration::from_secs(2));
    cfg.record_delay = Duration::from_millis(500);
    cfg.recording_delay = Duration::from_millis(1500);
    let m = mount(stack(cfg, |fc| fc.recent_ttl = Duration::from_millis(500)));
    let today = Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();
    let start = Timestamp::now();
    let list = || -> BTreeSet<String> {
        std::fs::read_dir(m.p(&today))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    let before = list();
    let new_session = eventually(Duration::from_secs(20), || {
        let now = list();
        now.difference(&before).next().cloned()
    })
    .expect("a new call appeared in today's directory");
    // Its recording becomes readable (EAGAIN until the emulator finished "processing" it).
    let dir = m.p(&today).join(&new_session);
    let file = recordings_under(&dir)
        .into_iter()
        .next()
        .expect("recording file");
    let id = recording_id_of(&file);
    let got = eventually(Duration::from_secs(20), || {
        match std::fs::read(dir.join(&file)) {
            Ok(b) => Some(b),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => None,
            Err(e) => panic!("unexpected error {e}"),
        }
    })
    .expect("recording became readable");
    assert_eq!(got, m.emu().recording_bytes(&id).unwrap());
    assert!(Timestamp::now().duration_since(start).as_secs() < 40);
}

/// Regression: a media host that answers chunked (no Content-Length), ignores Range and says
/// `audio/x-wav`. A `stat` taken while a recording streams, then reads to the end, must give the
/// whole recording, and `st_size` must be exact once it has been read.
#[test]
fn chunked_range_ignored_media_is_never_truncated() {
    use ringfs::emulator::{AudioFormat, MediaBehaviour};
    if !can_mount() {
        return;
    }
    let mut cfg = quick_config(30, 3);
    cfg.format = AudioFormat::Wav;
    cfg.media = MediaBehaviour {
        omit_content_length: true,
        ignore_range: true,
        x_wav: true,
        ..MediaBehaviour::default()
    };
    cfg.faults.max_bytes_per_sec = Some(4 << 20);
    let m = mount(stack(cfg, |_| {}));
    let files = recordings_under(m.path());
    assert!(files.len() >= 5, "{files:?}");
    for rel in &files {
        let path = m.p(&rel.to_string_lossy());
        let id = recording_id_of(rel);
        let truth = m.emu().recording_bytes(&id).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        let mut head = vec![0u8; 70_000.min(truth.len())];
        f.read_exact(&mut head)
            .unwrap_or_else(|e| panic!("{rel:?} ({} bytes): {e}", truth.len()));
        // A stat while the download is running: must not publish a lower bound as the size.
        let _ = std::fs::metadata(&path).unwrap();
        let mut rest = Vec::new();
        f.read_to_end(&mut rest).unwrap();
        head.extend_from_slice(&rest);
        assert_eq!(head.len(), truth.len(), "{rel:?}: length through the mount");
        assert!(head == truth, "{rel:?}: bytes differ");
        drop(f);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            truth.len() as u64,
            "{rel:?}: st_size once read"
        );
        assert_eq!(std::fs::read(&path).unwrap(), truth, "{rel:?}: second read");
    }
}

/// A media host (or a proxy before it) that sends bodies without a length, delimited by closing
/// the connection, and cuts every one at the same byte: each answer looks like a file that ends
/// there. A WAV's RIFF header says how long the file is, and an MP3's last frame header says the
/// frame goes on past the cut, so reading past the cut fails (EIO) instead of returning a
/// shorter file, and the bytes before it are the recording's.
#[test]
fn a_wav_cut_at_one_size_by_every_answer_is_an_error_not_a_shorter_file() {
    cut_at_one_size_by_every_answer(ringfs::emulator::AudioFormat::Wav, "wav");
}

#[test]
fn an_mp3_cut_at_one_size_by_every_answer_is_an_error_not_a_shorter_file() {
    cut_at_one_size_by_every_answer(ringfs::emulator::AudioFormat::Mp3, "mp3");
}

fn cut_at_one_size_by_every_answer(format: ringfs::emulator::AudioFormat, what: &str) {
    use ringfs::emulator::{Faults, MediaBehaviour};
    if !can_mount() {
        return;
    }
    // Inside a frame of the emulator's MP3s (144 bytes each), and inside a WAV's samples.
    const CUT: u64 = 100_000;
    let mut cfg = quick_config(12, 2);
    cfg.format = format;
    cfg.media = MediaBehaviour {
        close_delimited: true,
        ignore_range: true,
        ..MediaBehaviour::default()
    };
    cfg.faults = Faults {
        drop_after_bytes: Some(CUT),
        ..Faults::default()
    };
    let m = mount(stack(cfg, |_| {}));
    let long: Vec<_> = recordings_under(m.path())
        .into_iter()
        .filter(|rel| {
            let id = recording_id_of(rel);
            m.emu()
                .recording_bytes(&id)
                .is_some_and(|b| b.len() as u64 > 2 * CUT)
        })
        .collect();
    assert!(long.len() >= 2, "two recordings longer than two cuts");
    // A first read past the cut: each answer (from byte 0, Range ignored) ends before the
    // offset asked for, and the format's evidence is in the bytes the answer skipped.
    {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::File::open(m.p(&long[1].to_string_lossy())).unwrap();
        f.seek(SeekFrom::Start(CUT + 50_000)).unwrap();
        let mut buf = vec![0u8; 4096];
        let past = f.read(&mut buf);
        assert_eq!(
            past.map_err(|e| e.raw_os_error()),
            Err(Some(libc::EIO)),
            "a first read past the cut"
        );
    }
    let rel = long[0].clone();
    let id = recording_id_of(&rel);
    let truth = m.emu().recording_bytes(&id).unwrap();
    let path = m.p(&rel.to_string_lossy());
    let mut head = vec![0u8; 50_000];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert!(head == truth[..50_000], "the bytes before the cut");
    let whole = std::fs::read(&path);
    assert_eq!(
        whole
            .as_ref()
            .map(|b| b.len())
            .map_err(|e| e.raw_os_error()),
        Err(Some(libc::EIO)),
        "{} bytes in truth",
        truth.len()
    );
    let spent = m.emu().stats().media_of(&id);
    eprintln!(
        "[{what} cut] {rel:?}: EIO past byte {CUT} of {}, {spent} media requests",
        truth.len()
    );
    assert!(spent <= 8, "{spent} media requests");
}

/// Every recording of an account whose media host mixes every behaviour it may show, one mix per
/// recording (chunked or not, Range honoured, ignored, cut short or with an unknown total, the
/// forms of 416, drops at bytes, slow bodies, 5xx, a 404 before the first 200): read through the
/// kernel in the ways programs read, byte-identical, `st_size` exact once read, requests bounded.
#[test]
fn a_mixed_media_host_never_yields_wrong_bytes() {
    use ringfs::emulator::{AudioFormat, MediaBehaviour, RangeMode};
    if !can_mount() {
        return;
    }
    let seed = std::env::var("RINGFS_MIX_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    eprintln!("[mixed media] seed {seed} (replay: RINGFS_MIX_SEED={seed})");
    let mut cfg = quick_config(60, 4);
    cfg.format = AudioFormat::Mixed;
    cfg.media = MediaBehaviour {
        mixed: Some(seed),
        ..MediaBehaviour::default()
    };
    let m = mount(stack(cfg, |_| {}));
    let files = recordings_under(m.path());
    assert!(files.len() >= 20, "{}", files.len());
    let (mut bytes, mut retried, mut requests) = (0u64, 0, 0);
    for (i, rel) in files.iter().enumerate() {
        let path = m.p(&rel.to_string_lossy());
        let id = recording_id_of(rel);
        let truth = m.emu().recording_bytes(&id).unwrap();
        let q = m.emu().media_quirks(&id);
        // A 404 before the first 200 fails the open; the recording cools down for a second.
        let mut attempts = 0;
        let got = loop {
            attempts += 1;
            let r = (|| -> std::io::Result<Vec<u8>> {
                let mut f = std::fs::File::open(&path)?;
                let mut out = Vec::new();
                match i % 3 {
                    // cat / cp: large sequential reads.
                    0 => {
                        f.read_to_end(&mut out)?;
                    }
                    // A player: small reads, a stat in between, a seek back.
                    1 => {
                        let mut buf = vec![0u8; 4096];
                        for _ in 0..8 {
                            let n = f.read(&mut buf)?;
                            out.extend_from_slice(&buf[..n]);
                            if n == 0 {
                                break;
                            }
                        }
                        let _ = std::fs::metadata(&path)?;
                        f.seek(SeekFrom::Start(0))?;
                        out.clear();
                        f.read_to_end(&mut out)?;
                    }
                    // A prober: the tail first, then the whole.
                    _ => {
                        let size = f.metadata()?.len();
                        f.seek(SeekFrom::Start(size.saturating_sub(1000)))?;
                        let mut tail = Vec::new();
                        f.read_to_end(&mut tail)?;
                        f.seek(SeekFrom::Start(0))?;
                        f.read_to_end(&mut out)?;
                    }
                }
                Ok(out)
            })();
            match r {
                Ok(b) => break b,
                Err(e) if q.not_found_first > 0 && attempts < 4 => {
                    retried += 1;
                    eprintln!("[mixed media] {id}: {e}; again after the cool-down");
                    std::thread::sleep(Duration::from_millis(1200));
                }
                Err(e) => panic!("{rel:?} ({q:?}): {e}"),
            }
        };
        assert_eq!(got.len(), truth.len(), "{rel:?} ({q:?}): length");
        assert!(got == truth, "{rel:?} ({q:?}): bytes differ");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            truth.len() as u64,
            "{rel:?} ({q:?}): st_size once read"
        );
        bytes += got.len() as u64;
        // Requests: one, plus one per thing the host did that calls for another.
        let spent = m.emu().stats().media_of(&id);
        requests += spent;
        let len = truth.len() as u64;
        let pieces = match q.range {
            RangeMode::Capped(cap) => len.div_ceil(cap.max(1)),
            _ => 1,
        };
        let bound = pieces
            + 2
            + q.errors_first as u64
            + q.not_found_first as u64
            + 2 * q.drop_at.len() as u64;
        assert!(
            spent <= bound,
            "{rel:?} ({q:?}): {spent} media requests, bound {bound}"
        );
    }
    eprintln!(
        "[mixed media] {} recordings, {bytes} bytes identical, {retried} opens retried after a 404, {requests} media requests",
        files.len()
    );
}

/// READDIRPLUS: `ls -l` of a date gets every session directory's name and attributes from the
/// listing, so the kernel sends no LOOKUP or GETATTR per entry (before, one LOOKUP each).
#[test]
fn ls_l_of_a_date_costs_no_lookup_per_entry() {
    if !can_mount() {
        return;
    }
    let m = mount(stack(quick_config(300, 30), |_| {}));
    let date = (Timestamp::now() - jiff::SignedDuration::from_hours(24 * 10))
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();
    let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let before = (n(&m.ops.lookup), n(&m.ops.getattr), n(&m.ops.getxattr));
    let out = Command::new("ls")
        .arg("-l")
        .arg(m.p(&date))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let entries = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('d'))
        .count();
    assert!(entries >= 2, "a date with few sessions: {entries}");
    let lookups = n(&m.ops.lookup) - before.0;
    let getattrs = n(&m.ops.getattr) - before.1;
    assert!(n(&m.ops.readdirplus) >= 1, "the kernel used no READDIRPLUS");
    // The date directory itself is looked up (and may be stat'ed) once: nothing per entry.
    assert!(
        lookups <= 1 && getattrs <= 1,
        "ls -l of {entries} sessions: {lookups} lookups, {getattrs} getattrs"
    );
    // ls asks each file for its SELinux label and both ACLs; told ACLs are not supported here,
    // it stops asking for them after the first entry: one round trip per entry, not three.
    let getxattrs = n(&m.ops.getxattr) - before.2;
    assert!(
        getxattrs <= entries as u64 + 6,
        "ls -l of {entries} sessions: {getxattrs} getxattrs"
    );
    eprintln!(
        "ls -l of {entries} sessions: {lookups} lookup(s), {getattrs} getattr(s), {getxattrs} getxattr(s)"
    );
}

#[test]
fn a_read_never_returns_zeros_past_the_end_of_a_file_whose_size_the_kernel_overestimated() {
    use ringfs::emulator::{AudioFormat, Faults};
    if !can_mount() {
        return;
    }
    // The names say WAV (16,000 bytes a second) and the content is MP3 (4,000): until the
    // kernel learns the end, it holds a size four times too large, and its read-ahead asks
    // for pages past the end. Those reads are answered at once (nothing is there, the length
    // is known), while the one that holds the last bytes waits for a slow body. The kernel
    // takes a file's size from the first short answer it sees: answered out of order, the end
    // would move to the later read's offset, and the bytes in between would read as zeros.
    let mut cfg = quick_config(8, 1);
    cfg.format = AudioFormat::Mp3;
    cfg.faults = Faults {
        max_bytes_per_sec: Some(300_000),
        ..Faults::default()
    };
    let m = mount(stack(cfg, |fc| {
        fc.assumed_format = ringfs::catalog::AudioKind::Wav
    }));
    let rel = recordings_under(m.path())
        .into_iter()
        .find(|rel| {
            let id = recording_id_of(rel);
            m.emu()
                .recording_bytes(&id)
                .is_some_and(|b| b.len() > 200_000)
        })
        .expect("a recording of more than 200,000 bytes");
    let truth = m.emu().recording_bytes(&recording_id_of(&rel)).unwrap();
    // Plain reads, no stat first (as dd does): the size the kernel holds is the estimate.
    let mut f = std::fs::File::open(m.p(&rel.to_string_lossy())).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 128 << 10];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got.len(), truth.len(), "{rel:?}: the length read");
    assert!(got == truth[..], "{rel:?}: the bytes read");
}
