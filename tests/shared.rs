//! A team's mounts sharing one fetch per recording through a bucket, against a real engine: a
//! three-node Garage cluster on loopback (tests/common/garage.rs) and the emulator. Publishers
//! fetch from the emulator and publish; readers have no RingCentral client at all. Every test
//! skips (printing why) when `garage` is not installed; the one with real mounts also when it
//! cannot mount.

mod common;
#[path = "common/garage.rs"]
mod garage;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{Child, MountPoint, can_mount, client_for, eventually, is_mounted, quick_config};
use garage::Garage;
use ringfs::catalog::Window;
use ringfs::emulator::{Config, Emulator};
use ringfs::fs::{Fs, FsConfig};
use ringfs::media::{Media, MediaConfig};
use ringfs::shared::Bucket;
use ringfs::shared::media::BucketMedia;
use ringfs::shared::tier::BucketTier;
use ringfs::store::{DiskStore, StoreConfig, Tier};

const ROOT: u64 = 1;

/// Media requests the emulator answered, all recordings together.
fn media_requests(emu: &Emulator) -> u64 {
    emu.stats()
        .by_endpoint
        .get("recording-content")
        .copied()
        .unwrap_or(0)
}

fn fs_config(cfg: &Config) -> FsConfig {
    let mut c = FsConfig::new(Window::last_days(cfg.days, jiff::tz::TimeZone::UTC));
    c.recent_ttl = Duration::from_secs(1);
    c
}

fn media_config() -> MediaConfig {
    MediaConfig {
        cache_bytes: 64 << 20,
        read_timeout: Duration::from_secs(20),
        ..MediaConfig::default()
    }
}

/// A publishing core over the emulator, as `serve` builds one with `--shared`: the bucket tier
/// below a disk tier (when `disk` is given), the call log published.
struct Publisher {
    fs: Arc<Fs>,
    tier: Arc<BucketTier>,
    bucket: Arc<Bucket>,
}

fn publisher(
    rt: &tokio::runtime::Runtime,
    g: &Garage,
    emu: &Emulator,
    cfg: &Config,
    prefix: &str,
    disk: Option<&std::path::Path>,
) -> Publisher {
    publisher_tuned(rt, g, emu, cfg, prefix, disk, |_| {})
}

fn publisher_tuned(
    rt: &tokio::runtime::Runtime,
    g: &Garage,
    emu: &Emulator,
    cfg: &Config,
    prefix: &str,
    disk: Option<&std::path::Path>,
    tune: impl FnOnce(&mut FsConfig),
) -> Publisher {
    let client = client_for(emu, cfg);
    rt.block_on(client.login()).unwrap();
    let bucket = Arc::new(g.bucket_at(prefix));
    rt.block_on(bucket.claim("emulated-account")).unwrap();
    rt.block_on(bucket.refresh()).unwrap();
    let disk: Option<Arc<dyn Tier>> =
        disk.map(|dir| DiskStore::open(dir, StoreConfig::default()).unwrap() as Arc<dyn Tier>);
    let mut config = fs_config(cfg);
    tune(&mut config);
    // The pieces `serve` puts together for `--shared`.
    let p = rt.block_on(ringfs::shared::publishing(
        bucket.clone(),
        Arc::new(client.clone()),
        disk,
        config.settle,
    ));
    let media = Media::with_tier(
        Arc::new(ringfs::source::ApiMedia::new(client)),
        media_config(),
        Some(p.tier),
    );
    let fs = Arc::new(Fs::new(p.log, media, config));
    let tier = p.bucket_tier;
    Publisher { fs, tier, bucket }
}

/// A reading core: the call log and media from the bucket, nothing else (no client exists).
fn reader(rt: &tokio::runtime::Runtime, g: &Garage, cfg: &Config, prefix: &str) -> Arc<Fs> {
    let bucket = Arc::new(g.bucket_at(prefix));
    assert!(rt.block_on(bucket.account()).unwrap().is_some());
    rt.block_on(bucket.refresh()).unwrap();
    // What `serve` builds for an s3:// source (no disk here).
    ringfs::shared::reader_core(bucket, media_config(), None, fs_config(cfg))
}

async fn read_all(fs: &Fs, ino: u64) -> Vec<u8> {
    let opened = fs.open(ino, false).await.unwrap();
    let mut out = Vec::new();
    loop {
        let b = fs
            .read(ino, opened.fh, out.len() as u64, 128 << 10)
            .await
            .unwrap();
        if b.is_empty() {
            break;
        }
        out.extend_from_slice(&b);
    }
    fs.release(opened.fh);
    out
}

/// Every file under the dates of the root: path -> content (recordings and call.json).
async fn walk(fs: &Fs) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for date in fs.opendir(ROOT).await.unwrap() {
        if date.name.starts_with("by-") {
            continue;
        }
        let d = fs.lookup(ROOT, OsStr::new(&date.name)).await.unwrap();
        for session in fs.opendir(d.ino).await.unwrap() {
            if session.kind != ringfs::fs::Kind::Dir {
                continue; // calls.csv
            }
            let s = fs.lookup(d.ino, OsStr::new(&session.name)).await.unwrap();
            for file in fs.opendir(s.ino).await.unwrap() {
                let f = fs.lookup(s.ino, OsStr::new(&file.name)).await.unwrap();
                let path = format!("{}/{}/{}", date.name, session.name, file.name);
                out.insert(path, read_all(fs, f.ino).await);
            }
        }
    }
    out
}

/// Waits until every call of the emulator that shows within the next 30 s is in its call log
/// and its recording fetchable, so that every mount of the test (a few seconds) sees the same
/// account. Calls still going on for longer stay out of sight meanwhile.
fn settle(emu: &Emulator) {
    let now = jiff::Timestamp::now();
    let soon = now + jiff::SignedDuration::from_secs(30);
    let last = emu
        .calls()
        .iter()
        .map(|c| c.fetchable_at.max(c.visible_at))
        .filter(|t| *t <= soon)
        .max();
    if let Some(last) = last {
        let wait = last.duration_since(now);
        if wait.is_positive() {
            std::thread::sleep(Duration::try_from(wait).unwrap() + Duration::from_millis(50));
        }
    }
}

fn recordings(tree: &BTreeMap<String, Vec<u8>>) -> usize {
    tree.keys()
        .filter(|p| !p.ends_with("call.json") && !p.ends_with("calls.csv"))
        .count()
}

#[test]
fn a_reader_serves_what_one_publisher_fetched_and_a_second_publisher_spends_nothing() {
    let Some(g) = Garage::start() else { return };
    let rt = common::runtime();
    // Three dates: the oldest has settled whatever the time of day, so its manifest is final.
    let cfg = quick_config(12, 3);
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    settle(&emu);
    let disk = tempfile::tempdir().unwrap();

    let p1 = publisher(&rt, &g, &emu, &cfg, "team", Some(disk.path()));
    let want = rt.block_on(walk(&p1.fs));
    let n = recordings(&want);
    assert!(n >= 4, "{n} recordings");
    for (path, bytes) in &want {
        if !path.ends_with("call.json") {
            let id = common::recording_id_of(std::path::Path::new(path));
            assert_eq!(Some(bytes), emu.recording_bytes(&id).as_ref(), "{path}");
        }
    }
    assert!(rt.block_on(p1.tier.flush(Duration::from_secs(20))));
    assert_eq!(p1.bucket.stats().recordings_put, n as u64);
    assert_eq!(
        media_requests(&emu),
        n as u64,
        "one media request per recording"
    );

    // The reader: same tree, same bytes, from the bucket alone. Manifests are published in the
    // background: the reader lists once they are all there.
    let before = emu.stats();
    let got = eventually(Duration::from_secs(10), || {
        let r = reader(&rt, &g, &cfg, "team");
        let got = rt.block_on(walk(&r));
        (got.len() == want.len()).then_some(got)
    })
    .expect("the reader sees every file");
    assert_eq!(got, want, "the reader's tree and bytes are the publisher's");
    let after = emu.stats();
    assert_eq!(
        before.by_endpoint, after.by_endpoint,
        "the reader sent RingCentral nothing"
    );

    // A second publisher (a new machine: no disk cache): every recording from the bucket.
    let p2 = publisher(&rt, &g, &emu, &cfg, "team", None);
    let again = rt.block_on(walk(&p2.fs));
    assert_eq!(again, want);
    assert_eq!(
        media_requests(&emu),
        n as u64,
        "the second publisher spent no media request"
    );
    assert_eq!(p2.bucket.stats().recordings_put, 0);

    // A publisher whose window is a settled date (final in the bucket) lists it from there:
    // no call-log request either.
    let call_log = |emu: &Emulator| {
        let s = emu.stats();
        s.by_endpoint.get("account-call-log").copied().unwrap_or(0)
            + s.by_endpoint
                .get("extension-call-log")
                .copied()
                .unwrap_or(0)
    };
    let pages = call_log(&emu);
    let settled = jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date()
        .checked_sub(jiff::Span::new().days(2))
        .unwrap();
    let mut window = Window::last_days(1, jiff::tz::TimeZone::UTC);
    window.since = Some(settled);
    window.until = Some(settled);
    let old: Vec<String> = want
        .keys()
        .filter(|k| k.starts_with(&settled.to_string()))
        .cloned()
        .collect();
    assert!(!old.is_empty(), "the settled date has calls");
    let p4 = publisher_tuned(&rt, &g, &emu, &cfg, "team", None, |c| c.window = window);
    let listed = rt.block_on(walk(&p4.fs));
    assert_eq!(
        listed.keys().cloned().collect::<Vec<_>>(),
        old,
        "the settled date as the first publisher listed it"
    );
    assert_eq!(
        call_log(&emu),
        pages,
        "no call-log request for a final date"
    );
}

#[test]
fn a_read_completes_while_a_garage_node_is_stopped() {
    let Some(mut g) = Garage::start() else {
        return;
    };
    let rt = common::runtime();
    // One recording of 6 MiB, published directly.
    let data: Vec<u8> = (0..6u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let b = g.bucket_at("node");
    rt.block_on(b.claim("emulated-account")).unwrap();
    rt.block_on(b.put_recording("77777777", "audio/mpeg", data.clone().into()))
        .unwrap();

    let bucket = Arc::new(g.bucket_at("node"));
    rt.block_on(bucket.refresh()).unwrap();
    // Garage keeps the content type and the checksum metadata.
    let held = bucket.held("77777777").unwrap();
    assert_eq!(
        (held.size, held.content_type.as_str()),
        (6 << 20, "audio/mpeg")
    );
    let meta = rt.block_on(bucket.recording_metadata("77777777")).unwrap();
    let sha: String = ring::digest::digest(&ring::digest::SHA256, &data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(meta.get("sha256"), Some(&sha));
    assert_eq!(
        meta.get("content-type").map(String::as_str),
        Some("audio/mpeg")
    );
    // Small read-ahead and cache: the read needs several GETs, some after the node stopped.
    let media = Media::new(
        Arc::new(BucketMedia::new(bucket.clone())),
        MediaConfig {
            cache_bytes: 4 << 20,
            readahead: 512 << 10,
            far_seek: 256 << 10,
            idle_timeout: Duration::from_millis(200),
            read_timeout: Duration::from_secs(20),
            ..MediaConfig::default()
        },
    );
    let key = ringfs::media::RecordingKey {
        id: "77777777".into(),
        content_uri: String::new(),
    };
    let mut got = Vec::new();
    let piece = 256 << 10;
    while got.len() < data.len() {
        if got.len() == 1 << 20 {
            g.stop_node(2);
        }
        if got.len() == 3 << 20 {
            // A far seek back and forth: new ranged GETs while a node is down.
            let _ = rt
                .block_on(media.read(&key, 5 << 20, 1024, ringfs::api::Priority::Interactive))
                .unwrap();
        }
        let b = rt
            .block_on(media.read(
                &key,
                got.len() as u64,
                piece,
                ringfs::api::Priority::Interactive,
            ))
            .unwrap();
        assert!(!b.is_empty());
        got.extend_from_slice(&b);
    }
    assert!(got == data, "the bytes read are the recording's");
    assert!(
        bucket.stats().recording_gets >= 2,
        "the read spanned several GETs"
    );
}

#[test]
fn a_publisher_killed_mid_put_leaves_nothing_visible() {
    let Some(g) = Garage::start() else { return };
    let rt = common::runtime();
    let b = Arc::new(g.bucket_at("killed"));
    rt.block_on(b.claim("emulated-account")).unwrap();
    // How long a whole PUT of 64 MiB takes here, then one aborted a third of the way through
    // it (its request is on the wire by then: the connection is open within milliseconds).
    let data = bytes::Bytes::from(vec![5u8; 64 << 20]);
    let started = std::time::Instant::now();
    rt.block_on(b.put_recording("88888887", "audio/mpeg", data.clone()))
        .unwrap();
    let whole = started.elapsed();
    let put = {
        let b = b.clone();
        rt.spawn(async move { b.put_recording("88888888", "audio/mpeg", data).await })
    };
    std::thread::sleep(whole / 3);
    put.abort();
    assert!(rt.block_on(put).is_err(), "aborted before it completed");
    std::thread::sleep(Duration::from_millis(300));
    let fresh = g.bucket_at("killed");
    assert_eq!(
        rt.block_on(fresh.refresh()).unwrap(),
        1,
        "only the whole object is visible (a whole PUT took {whole:?})"
    );
    assert!(rt.block_on(fresh.find("88888888")).unwrap().is_none());
}

#[test]
fn publisher_and_reader_mounts_share_one_fetch_per_recording() {
    if !can_mount() {
        return;
    }
    let Some(g) = Garage::start() else { return };
    let rt = common::runtime();
    let cfg = quick_config(6, 2);
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    settle(&emu);
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("s3://{}/mounts", g.bucket);

    // The publisher: the real binary over the emulator, with --shared.
    let pub_mp = MountPoint(tempfile::tempdir().unwrap());
    let pub_mnt = pub_mp.0.path().to_path_buf();
    let mut c = common::ringfs_binary(
        &emu,
        &cfg,
        &pub_mnt,
        &tmp.path().join("state"),
        &tmp.path().join("publisher.log"),
    );
    c.arg("--shared")
        .arg(&url)
        .arg("--cache-dir")
        .arg(tmp.path().join("pub-cache"))
        .arg("-f")
        .envs(g.env())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _publisher = Child(Some(c.spawn().unwrap()));
    assert!(
        eventually(Duration::from_secs(30), || is_mounted(&pub_mnt)
            .then_some(()))
        .is_some(),
        "the publisher mounted"
    );
    let want: BTreeMap<String, Vec<u8>> = common::walk_files(&pub_mnt)
        .into_iter()
        .map(|rel| {
            let bytes = std::fs::read(pub_mnt.join(&rel)).unwrap();
            (rel.to_string_lossy().into_owned(), bytes)
        })
        .filter(|(rel, _)| !rel.starts_with("by-"))
        .collect();
    let n = recordings(&want);
    assert!(n >= 4, "{n} recordings");
    // Every recording published (the uploader runs in the background).
    let watch = g.bucket_at("mounts");
    assert!(
        eventually(Duration::from_secs(20), || {
            (rt.block_on(watch.refresh()).unwrap() == n).then_some(())
        })
        .is_some(),
        "every recording reached the bucket"
    );
    let spent = emu.stats();

    // The reader: the real binary with the bucket as its source. RingCentral credentials are
    // in its environment (ringfs_binary sets them, and the emulator's URL): it must not use them.
    let read_mp = MountPoint(tempfile::tempdir().unwrap());
    let read_mnt = read_mp.0.path().to_path_buf();
    let c = common::ringfs_binary(
        &emu,
        &cfg,
        &read_mnt,
        &tmp.path().join("state2"),
        &tmp.path().join("reader.log"),
    );
    let args: Vec<std::ffi::OsString> = c.get_args().map(|a| a.to_os_string()).collect();
    let mut c2 = std::process::Command::new(c.get_program());
    // The same command line with the bucket as the source in place of the API URL.
    c2.arg(&url)
        .args(&args[1..])
        .arg("--cache-dir")
        .arg(tmp.path().join("read-cache"))
        .arg("-f")
        .env_clear()
        .envs(
            c.get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_os_string(), v.to_os_string()))),
        )
        .env("RC_SERVER_URL", emu.api_url())
        .envs(g.env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _reader = Child(Some(c2.spawn().unwrap()));
    assert!(
        eventually(Duration::from_secs(30), || is_mounted(&read_mnt)
            .then_some(()))
        .is_some(),
        "the reader mounted"
    );
    let got: BTreeMap<String, Vec<u8>> = eventually(Duration::from_secs(15), || {
        let got: BTreeMap<String, Vec<u8>> = common::walk_files(&read_mnt)
            .into_iter()
            .filter_map(|rel| {
                let bytes = std::fs::read(read_mnt.join(&rel)).ok()?;
                Some((rel.to_string_lossy().into_owned(), bytes))
            })
            .filter(|(rel, _)| !rel.starts_with("by-"))
            .collect();
        (got.len() == want.len()).then_some(got)
    })
    .expect("the reader shows every file");
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &want {
        assert!(got[path] == *bytes, "{path} differs through the reader");
    }
    let after = emu.stats();
    assert_eq!(
        spent.by_endpoint, after.by_endpoint,
        "the reader sent RingCentral nothing (not even a token request)"
    );
    assert_eq!(
        media_requests(&emu),
        n as u64,
        "one media request per recording across both mounts"
    );
}

#[test]
fn an_archive_fills_the_bucket_and_a_rerun_spends_no_media_request() {
    let Some(g) = Garage::start() else { return };
    let rt = common::runtime();
    let cfg = quick_config(10, 3);
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    settle(&emu);

    let p = publisher(&rt, &g, &emu, &cfg, "archive", None);
    let mut reports = 0;
    let first = rt
        .block_on(ringfs::shared::archive::archive(
            &p.fs,
            &p.bucket,
            &p.tier,
            |_| reports += 1,
        ))
        .unwrap();
    assert!(first.recordings >= 4, "{first:?}");
    assert_eq!(
        (first.fetched, first.skipped, first.failed),
        (first.recordings, 0, 0)
    );
    assert_eq!(
        reports,
        1 + first.recordings,
        "progress after the listing and each recording"
    );
    assert_eq!(media_requests(&emu), first.recordings as u64);

    // The bucket holds every recording, byte for byte.
    let fresh = g.bucket_at("archive");
    assert_eq!(rt.block_on(fresh.refresh()).unwrap(), first.recordings);
    let tree = rt.block_on(walk(&reader(&rt, &g, &cfg, "archive")));
    assert_eq!(recordings(&tree), first.recordings);
    for (path, bytes) in &tree {
        if !path.ends_with("call.json") {
            let id = common::recording_id_of(std::path::Path::new(path));
            assert!(Some(bytes) == emu.recording_bytes(&id).as_ref(), "{path}");
        }
    }

    // A rerun (a new process: nothing in memory) skips everything.
    let again = publisher(&rt, &g, &emu, &cfg, "archive", None);
    let second = rt
        .block_on(ringfs::shared::archive::archive(
            &again.fs,
            &again.bucket,
            &again.tier,
            |_| {},
        ))
        .unwrap();
    assert_eq!(
        (second.recordings, second.skipped, second.fetched),
        (first.recordings, first.recordings, 0)
    );
    assert_eq!(
        media_requests(&emu),
        first.recordings as u64,
        "the rerun spent no media request"
    );
}

#[test]
fn a_reader_serves_what_it_holds_and_fails_the_rest_with_eio_while_the_bucket_is_down() {
    let Some(mut g) = Garage::start() else {
        return;
    };
    let rt = common::runtime();
    let cfg = quick_config(8, 2);
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    settle(&emu);
    let p = publisher(&rt, &g, &emu, &cfg, "down", None);
    let want = rt.block_on(walk(&p.fs));
    assert!(rt.block_on(p.tier.flush(Duration::from_secs(20))));
    let files: Vec<&String> = want.keys().filter(|k| !k.ends_with("call.json")).collect();
    assert!(files.len() >= 2);

    assert!(
        eventually(Duration::from_secs(10), || {
            let r = reader(&rt, &g, &cfg, "down");
            (rt.block_on(walk(&r)).len() == want.len()).then_some(())
        })
        .is_some(),
        "the manifests are published"
    );
    // A new reader finds two recordings, reads one, then loses the bucket: the node it talks to
    // stops.
    let r = reader(&rt, &g, &cfg, "down");
    let ino_of = |path: &str| {
        rt.block_on(async {
            let mut ino = ROOT;
            for part in path.split('/') {
                ino = r.lookup(ino, OsStr::new(part)).await.unwrap().ino;
            }
            ino
        })
    };
    let (first, other) = (files[0], files[files.len() - 1]);
    let (held, r2_ino) = (ino_of(first), ino_of(other));
    assert_eq!(rt.block_on(read_all(&r, held)), want[first]);
    g.stop_node(0);
    // Listing the newest date again (a date that may still change, past recent_ttl) needs the
    // bucket: EIO, and the core takes the bucket for down.
    std::thread::sleep(Duration::from_millis(1100));
    let date = other.split('/').next().unwrap();
    let d = rt.block_on(r.lookup(ROOT, OsStr::new(date))).unwrap();
    let listed = rt.block_on(r.opendir(d.ino));
    assert_eq!(listed.err().map(|e| e.to_errno()), Some(libc::EIO));
    // What the reader holds is served; what it does not fails with EIO at once.
    assert_eq!(rt.block_on(read_all(&r, held)), want[first]);
    let started = std::time::Instant::now();
    let opened = rt.block_on(r.open(r2_ino, false));
    let failed = match opened {
        Err(e) => Some(e.to_errno()),
        Ok(o) => rt
            .block_on(r.read(r2_ino, o.fh, 0, 4096))
            .err()
            .map(|e| e.to_errno()),
    };
    assert_eq!(failed, Some(libc::EIO));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_publisher_serves_from_ringcentral_while_the_bucket_is_down_and_publishes_later() {
    let Some(mut g) = Garage::start() else {
        return;
    };
    let rt = common::runtime();
    let cfg = quick_config(6, 2);
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    settle(&emu);
    let p = publisher(&rt, &g, &emu, &cfg, "later", None);
    g.stop_node(0);
    let tree = rt.block_on(walk(&p.fs));
    let n = recordings(&tree);
    assert!(n >= 3);
    for (path, bytes) in &tree {
        if !path.ends_with("call.json") {
            let id = common::recording_id_of(std::path::Path::new(path));
            assert!(Some(bytes) == emu.recording_bytes(&id).as_ref(), "{path}");
        }
    }
    // The PUTs fail (after object_store's own retries) while the node is down.
    assert!(
        eventually(Duration::from_secs(30), || {
            (p.bucket.stats().put_failures >= 1).then_some(())
        })
        .is_some()
    );
    assert_eq!(p.bucket.stats().recordings_put, 0);
    g.restart_node(0);
    assert!(
        rt.block_on(p.tier.flush(Duration::from_secs(40))),
        "the queue was published once the bucket came back"
    );
    let fresh = g.bucket_at("later");
    assert_eq!(rt.block_on(fresh.refresh()).unwrap(), n);
}

#[test]
fn the_archive_command_fills_the_bucket_resumes_and_refuses_another_accounts_prefix() {
    let Some(g) = Garage::start() else { return };
    let rt = common::runtime();
    let cfg = quick_config(6, 2);
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    settle(&emu);
    let tmp = tempfile::tempdir().unwrap();
    let run = |url: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ringfs"))
            .arg("archive")
            .arg(emu.api_url())
            .arg(url)
            .args(["--days", "2", "--tz", "UTC"])
            .env_clear()
            .envs(common::kept_env())
            .env("RC_CLIENT_ID", &cfg.client_id)
            .env("RC_CLIENT_SECRET", &cfg.client_secret)
            .env("RC_JWT", &cfg.jwt)
            .env("XDG_STATE_HOME", tmp.path())
            .envs(g.env())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let url = format!("s3://{}/cli", g.bucket);
    let first = run(url.clone());
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let n = media_requests(&emu);
    assert!(n >= 3, "{n} recordings fetched");
    assert!(
        out.contains(&format!("{n}/{n} fetched (0 already in the bucket)")),
        "{out}"
    );
    let fresh = g.bucket_at("cli");
    assert_eq!(rt.block_on(fresh.refresh()).unwrap() as u64, n);

    let second = run(url);
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success(), "{out}");
    assert!(
        out.contains(&format!("0/0 fetched ({n} already in the bucket)")),
        "{out}"
    );
    assert_eq!(media_requests(&emu), n, "the rerun spent no media request");

    // A prefix another account claimed is refused before anything is fetched.
    let other = g.bucket_at("other");
    rt.block_on(other.claim("someone-else")).unwrap();
    let refused = run(format!("s3://{}/other", g.bucket));
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("holds the recordings of account someone-else"),
        "{err}"
    );
    assert_eq!(media_requests(&emu), n);
}

#[test]
fn a_reader_sees_recordings_the_publisher_adds_after_it_mounted() {
    let Some(g) = Garage::start() else { return };
    let rt = common::runtime();
    let mut cfg = quick_config(4, 1);
    // A live account: a new call ends every 2 s.
    cfg.live = Some(Duration::from_secs(2));
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    settle(&emu);
    let p = publisher(&rt, &g, &emu, &cfg, "live", None);
    // Lenient walks: a call that just ended may be listed a moment before its recording can be
    // fetched (or, for the reader, before it is published); such files are left out.
    let first = rt.block_on(walk_lenient(&p.fs));
    assert!(rt.block_on(p.tier.flush(Duration::from_secs(20))));
    let r = reader(&rt, &g, &cfg, "live");
    assert!(
        eventually(Duration::from_secs(10), || {
            (rt.block_on(walk_lenient(&r)) == first).then_some(())
        })
        .is_some(),
        "the reader lists what the publisher listed first"
    );

    // New calls end; the publisher lists today again (past recent_ttl) and reads them.
    let later = eventually(Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(500));
        let t = rt.block_on(walk_lenient(&p.fs));
        (recordings(&t) > recordings(&first)).then_some(t)
    })
    .expect("the publisher sees new recordings");
    assert!(rt.block_on(p.tier.flush(Duration::from_secs(20))));

    // The same reader, mounted before they were published, shows them once it lists today
    // again, with the publisher's bytes.
    assert!(
        eventually(Duration::from_secs(10), || {
            std::thread::sleep(Duration::from_millis(300));
            let seen = rt.block_on(walk_lenient(&r));
            later
                .iter()
                .all(|(path, bytes)| seen.get(path) == Some(bytes))
                .then_some(())
        })
        .is_some(),
        "the reader shows the new recordings"
    );
}

/// Like [`walk`], leaving out the files that cannot be read now.
async fn walk_lenient(fs: &Fs) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(dates) = fs.opendir(ROOT).await else {
        return out;
    };
    for date in dates {
        if date.name.starts_with("by-") {
            continue;
        }
        let Ok(d) = fs.lookup(ROOT, OsStr::new(&date.name)).await else {
            continue;
        };
        for session in fs.opendir(d.ino).await.unwrap_or_default() {
            let Ok(s) = fs.lookup(d.ino, OsStr::new(&session.name)).await else {
                continue;
            };
            for file in fs.opendir(s.ino).await.unwrap_or_default() {
                let Ok(f) = fs.lookup(s.ino, OsStr::new(&file.name)).await else {
                    continue;
                };
                let Ok(opened) = fs.open(f.ino, false).await else {
                    continue;
                };
                let mut bytes = Vec::new();
                let ok = loop {
                    match fs
                        .read(f.ino, opened.fh, bytes.len() as u64, 128 << 10)
                        .await
                    {
                        Ok(b) if b.is_empty() => break true,
                        Ok(b) => bytes.extend_from_slice(&b),
                        Err(_) => break false,
                    }
                };
                fs.release(opened.fh);
                if ok {
                    let path = format!("{}/{}/{}", date.name, session.name, file.name);
                    out.insert(path, bytes);
                }
            }
        }
    }
    out
}

#[test]
fn two_publishers_at_once_leave_one_whole_copy_of_each_recording() {
    let Some(g) = Garage::start() else { return };
    let rt = common::runtime();
    let cfg = quick_config(8, 2);
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    settle(&emu);
    let a = publisher(&rt, &g, &emu, &cfg, "two", None);
    let b = publisher(&rt, &g, &emu, &cfg, "two", None);
    // Both walk the account at the same time: each fetches what the bucket lacks when it needs
    // it, so a recording may be fetched (and PUT) by both.
    let (ta, tb) = rt.block_on(async { tokio::join!(walk(&a.fs), walk(&b.fs)) });
    assert_eq!(ta, tb);
    let n = recordings(&ta) as u64;
    assert!(rt.block_on(a.tier.flush(Duration::from_secs(20))));
    assert!(rt.block_on(b.tier.flush(Duration::from_secs(20))));
    let spent = media_requests(&emu);
    assert!(
        n <= spent && spent <= 2 * n,
        "{spent} media requests for {n}"
    );
    let puts = a.bucket.stats().recordings_put + b.bucket.stats().recordings_put;
    assert!(n <= puts && puts <= 2 * n, "{puts} PUTs for {n}");
    // One object per recording, each the recording's bytes, and the manifests readable.
    let fresh = Arc::new(g.bucket_at("two"));
    assert_eq!(rt.block_on(fresh.refresh()).unwrap() as u64, n);
    let tree = rt.block_on(walk(&reader(&rt, &g, &cfg, "two")));
    assert_eq!(tree, ta);
}
