//! What a mount fetched outlives it: two real mounts (root, /dev/fuse) of one emulated account
//! over the same cache directory. The second reads every recording again without one media
//! request, and gets the same bytes; with the call index, it lists past dates without a call-log
//! request, and it mounts and serves what it has when the API is unreachable; with passthrough
//! the kernel reads recordings from the cache itself; and a mount killed with SIGKILL
//! mid-download leaves nothing wrong behind.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ringfs::api::ClientConfig;
use ringfs::catalog::Window;
use ringfs::emulator::{Emulator, Faults};
use ringfs::fs::{Fs, FsConfig};
use ringfs::media::MediaStats;
use ringfs::media::{Media, MediaConfig};
use ringfs::store::{DiskStats, DiskStore, MetaStore, StoreConfig, disk};

/// A mount of `fs`, unmounted on drop (even when the test fails).
struct Mount {
    bg: Option<ringfs::fuse::Background>,
    dir: tempfile::TempDir,
}

impl Drop for Mount {
    fn drop(&mut self) {
        drop(self.bg.take());
        force_unmount(self.dir.path());
    }
}

fn mount_fs(fs: Arc<Fs>, rt: &tokio::runtime::Runtime, passthrough: bool) -> Mount {
    let dir = tempfile::Builder::new()
        .prefix("ringfs-persist-")
        .tempdir()
        .unwrap();
    let adapter = ringfs::fuse::FuseAdapter::new(fs, rt.handle().clone());
    let settings = ringfs::fuse::MountSettings {
        fsname: "ringfs-test".into(),
        passthrough,
        ..Default::default()
    };
    let m = ringfs::fuse::mount(adapter, dir.path(), &settings).expect("mount");
    Mount {
        bg: Some(m.spawn().unwrap()),
        dir,
    }
}

/// A new client, media layer (over `disk`) and core: what a new `ringfs` process builds.
fn core(
    rt: &tokio::runtime::Runtime,
    emu: &Emulator,
    cfg: &ringfs::emulator::Config,
    disk: Arc<DiskStore>,
) -> Arc<Fs> {
    let client = client_for(emu, cfg);
    rt.block_on(client.login()).unwrap();
    let media = Media::with_tier(
        Arc::new(ringfs::source::ApiMedia::new(client.clone())),
        MediaConfig {
            cache_bytes: 512 << 20,
            read_timeout: Duration::from_secs(20),
            ..MediaConfig::default()
        },
        Some(disk),
    );
    let mut fc = FsConfig::new(Window::last_days(cfg.days, jiff::tz::TimeZone::UTC));
    fc.recent_ttl = Duration::from_secs(1);
    Arc::new(Fs::new(Arc::new(client), media, fc))
}

/// Every recording under the mount, by recording id: (size shown by `stat`, bytes read).
fn read_every_recording(root: &Path) -> BTreeMap<String, (u64, Vec<u8>)> {
    walk_files(root)
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|e| e == "mp3" || e == "wav")
                && !p.starts_with("by-recording")
        })
        .map(|p| {
            let size = std::fs::metadata(root.join(&p)).unwrap().len();
            (
                recording_id_of(&p),
                (size, std::fs::read(root.join(&p)).unwrap()),
            )
        })
        .collect()
}

#[test]
fn a_remount_over_the_same_cache_dir_reads_every_recording_without_a_media_request() {
    if !can_mount() {
        return;
    }
    let cfg = quick_config(30, 3);
    let rt = runtime();
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    // Let every recording become fetchable, so both mounts see the same ones.
    std::thread::sleep(Duration::from_millis(600));
    let cache = tempfile::tempdir().unwrap();

    let disk = DiskStore::open(cache.path(), StoreConfig::default()).unwrap();
    let m = mount_fs(core(&rt, &emu, &cfg, disk.clone()), &rt, false);
    let before = emu.stats().media();
    let first = read_every_recording(m.dir.path());
    let spent_first = emu.stats().media() - before;
    assert!(first.len() >= 10, "{} recordings", first.len());
    for (id, (_, bytes)) in &first {
        assert_eq!(
            Some(bytes),
            emu.recording_bytes(id).as_ref(),
            "{id}: bytes as served"
        );
    }
    drop(m);
    // The process ends: its downloads stop and the store writes out what is queued.
    std::thread::sleep(Duration::from_millis(200));
    disk.shutdown();
    drop(disk);

    let disk = DiskStore::open(cache.path(), StoreConfig::default()).unwrap();
    assert_eq!(disk.stats().discarded, 0);
    let m = mount_fs(core(&rt, &emu, &cfg, disk.clone()), &rt, false);
    let baseline = emu.stats().media();
    let second = read_every_recording(m.dir.path());
    let spent_second = emu.stats().media() - baseline;
    eprintln!(
        "{} recordings: {spent_first} media requests on the first mount, {spent_second} after the remount",
        first.len()
    );
    assert_eq!(spent_second, 0, "every recording came from the disk cache");
    assert_eq!(
        second.keys().collect::<Vec<_>>(),
        first.keys().collect::<Vec<_>>()
    );
    for (id, (size, bytes)) in &second {
        assert_eq!(
            *size,
            bytes.len() as u64,
            "{id}: stat shows the exact size before any read"
        );
        assert!(bytes == &first[id].1, "{id}: same bytes after the remount");
    }
    drop(m);
    disk.shutdown();
}

/// What `ringfs` builds over a cache directory with a call index (the same calls as `cli.rs`:
/// `Fs::with_index`, then `Fs::start` with the client's login), tokens kept in `state_file`.
fn indexed_core(
    rt: &tokio::runtime::Runtime,
    emu: &Emulator,
    cfg: &ringfs::emulator::Config,
    disk: Arc<DiskStore>,
    state_file: &Path,
) -> (Arc<Fs>, Arc<MetaStore>) {
    let mut c = ClientConfig::new(ringfs::api::Credentials {
        server_url: emu.api_url(),
        client_id: cfg.client_id.clone(),
        client_secret: cfg.client_secret.clone(),
        jwt: cfg.jwt.clone(),
    });
    c.media_base = Some(emu.media_url());
    c.state_file = Some(state_file.to_path_buf());
    let client = ringfs::api::Client::new(c).unwrap();
    let media = Media::with_tier(
        Arc::new(ringfs::source::ApiMedia::new(client.clone())),
        MediaConfig {
            cache_bytes: 512 << 20,
            read_timeout: Duration::from_secs(20),
            ..MediaConfig::default()
        },
        Some(disk.clone()),
    );
    let mut fc = FsConfig::new(Window::last_days(cfg.days, jiff::tz::TimeZone::UTC));
    fc.read_timeout = Duration::from_secs(20);
    let meta = Arc::new(MetaStore::open(disk.dir(), fc.retention).unwrap());
    let fs = Arc::new(Fs::with_index(
        Arc::new(client.clone()),
        media,
        fc,
        meta.clone(),
    ));
    rt.block_on(fs.start(client.login())).unwrap();
    (fs, meta)
}

/// The end of a process: the mount goes, the stores write out what is queued.
fn end(m: Mount, disk: Arc<DiskStore>, meta: Arc<MetaStore>) {
    drop(m);
    std::thread::sleep(Duration::from_millis(200));
    meta.shutdown();
    disk.shutdown();
}

fn date_name(days_ago: i64) -> String {
    (jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date()
        - jiff::Span::new().days(days_ago))
    .to_string()
}

#[test]
fn a_remount_with_the_call_index_walks_and_reads_everything_with_no_request_but_recent_dates() {
    if !can_mount() {
        return;
    }
    let cfg = quick_config(40, 3);
    let rt = runtime();
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let cache = tempfile::tempdir().unwrap();
    let state = cache.path().join("tokens.json");

    let disk = DiskStore::open(cache.path(), StoreConfig::default()).unwrap();
    let (fs, meta) = indexed_core(&rt, &emu, &cfg, disk.clone(), &state);
    let m = mount_fs(fs, &rt, false);
    let first_files = walk_files(m.dir.path());
    let first = read_every_recording(m.dir.path());
    let spent = emu.stats();
    assert!(first.len() >= 10, "{} recordings", first.len());
    end(m, disk, meta);

    emu.reset_stats();
    let disk = DiskStore::open(cache.path(), StoreConfig::default()).unwrap();
    let (fs, meta) = indexed_core(&rt, &emu, &cfg, disk.clone(), &state);
    let m = mount_fs(fs, &rt, false);
    let again_files = walk_files(m.dir.path());
    let again = read_every_recording(m.dir.path());
    let after = emu.stats();
    eprintln!(
        "{} recordings; first mount: {} call-log, {} media, {} token requests; remount: {} call-log, {} media, {} token, {} metadata",
        first.len(),
        spent.call_log(),
        spent.media(),
        spent.endpoint("token"),
        after.call_log(),
        after.media(),
        after.endpoint("token"),
        after.endpoint("recording-meta"),
    );
    // The walk lists by-session/ and by-recording/ first: empty on the first mount, full once
    // the index is known. The dates are the same.
    let dated = |files: &[std::path::PathBuf]| -> Vec<std::path::PathBuf> {
        files
            .iter()
            .filter(|p| !p.starts_with("by-session") && !p.starts_with("by-recording"))
            .cloned()
            .collect()
    };
    assert_eq!(dated(&again_files), dated(&first_files), "the same dates");
    assert!(again == first, "the same recordings, the same bytes");
    assert_eq!(after.media(), 0, "recordings from the disk cache");
    assert_eq!(after.endpoint("recording-meta"), 0);
    assert_eq!(after.endpoint("token"), 0, "tokens from the state file");
    assert!(
        after.call_log() <= 2,
        "only recent dates are brought up to date: {} call-log requests",
        after.call_log()
    );
    end(m, disk, meta);
}

#[test]
fn an_unreachable_api_mounts_offline_serves_the_cache_fails_fast_and_recovers() {
    if !can_mount() {
        return;
    }
    let cfg = quick_config(60, 3);
    let rt = runtime();
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let cache = tempfile::tempdir().unwrap();
    let state = cache.path().join("tokens.json");
    let (oldest, uncached) = (date_name(2), date_name(1));

    // The first mount lists only the window's oldest date, and reads its recordings.
    let disk = DiskStore::open(cache.path(), StoreConfig::default()).unwrap();
    let (fs, meta) = indexed_core(&rt, &emu, &cfg, disk.clone(), &state);
    let m = mount_fs(fs, &rt, false);
    let listed = names_in(&m.dir.path().join(&oldest)).unwrap();
    assert!(!listed.is_empty());
    let first = read_every_recording(&m.dir.path().join(&oldest));
    assert!(!first.is_empty());
    end(m, disk, meta);

    emu.set_faults(Faults {
        unreachable: true,
        ..Faults::default()
    });
    let disk = DiskStore::open(cache.path(), StoreConfig::default()).unwrap();
    let started = std::time::Instant::now();
    let (fs, meta) = indexed_core(&rt, &emu, &cfg, disk.clone(), &state);
    let m = mount_fs(fs, &rt, false);
    let start_took = started.elapsed();
    let mut again = names_in(&m.dir.path().join(&oldest)).unwrap();
    again.sort();
    let mut want = listed.clone();
    want.sort();
    assert_eq!(again, want, "the cached date lists");
    let offline = read_every_recording(&m.dir.path().join(&oldest));
    assert_eq!(
        offline.keys().collect::<Vec<_>>(),
        first.keys().collect::<Vec<_>>()
    );
    for (id, (size, bytes)) in &offline {
        assert_eq!(
            *size,
            bytes.len() as u64,
            "{id}: the exact size from the disk cache"
        );
        assert!(bytes == &first[id].1, "{id}: cached bytes, byte for byte");
    }
    let t = std::time::Instant::now();
    let r = names_in(&m.dir.path().join(&uncached));
    let eio_took = t.elapsed();
    assert_eq!(
        r.as_ref().err().and_then(|e| e.raw_os_error()),
        Some(libc::EIO),
        "{r:?}"
    );
    assert!(eio_took < Duration::from_secs(1), "EIO after {eio_took:?}");
    // A recording that was never fetched (by id, from the uncached date) fails as fast: the
    // media layer is offline too.
    let unfetched = emu
        .calls()
        .into_iter()
        .filter(|c| {
            c.start
                .to_zoned_datetime(jiff::tz::TimeZone::UTC)
                .date()
                .to_string()
                == uncached
        })
        .find_map(|c| c.recording_id)
        .expect("a recording on the uncached date");
    let t = std::time::Instant::now();
    let r = std::fs::read(m.dir.path().join(format!("by-recording/{unfetched}.mp3")));
    let unfetched_took = t.elapsed();
    assert_eq!(
        r.as_ref().err().and_then(|e| e.raw_os_error()),
        Some(libc::EIO),
        "{:?}",
        r.map(|b| b.len())
    );
    assert!(
        unfetched_took < Duration::from_secs(1),
        "EIO after {unfetched_took:?}"
    );

    emu.set_faults(Faults::default());
    let t = std::time::Instant::now();
    let back = eventually(Duration::from_secs(20), || {
        names_in(&m.dir.path().join(&uncached)).ok()
    });
    let back_took = t.elapsed();
    eprintln!(
        "offline: mounted after {start_took:?}, an uncached date failed after {eio_took:?}, an unfetched recording after {unfetched_took:?}, listed {back_took:?} after the API came back"
    );
    assert!(back.is_some_and(|n| !n.is_empty()), "the mount recovered");
    end(m, disk, meta);
}

/// Every recording file under the date directories, by recording id.
fn recording_files(root: &Path) -> BTreeMap<String, PathBuf> {
    walk_files(root)
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|e| e == "mp3" || e == "wav")
                && !p.starts_with("by-recording")
                && !p.starts_with("by-session")
        })
        .map(|p| (recording_id_of(&p), root.join(p)))
        .collect()
}

/// `cat FILE` by a separate process (as a user reads it): its stdout.
fn cat(path: &Path) -> Vec<u8> {
    let out = Command::new("cat").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "cat {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// What counts a read that reaches ringfs: the media layer's reads (each one a cache hit or a
/// miss) and disk loads, and the bytes the store read.
fn read_counters(m: &MediaStats, d: &DiskStats) -> (u64, u64, u64, u64) {
    (m.cache_hits, m.cache_misses, m.disk_reads, d.bytes_read)
}

/// A first mount over a new cache dir reads every recording (so the store holds them all
/// complete), then the store is closed as at the end of a process. Returns the emulator's
/// recordings by id.
fn fill_cache(
    rt: &tokio::runtime::Runtime,
    emu: &Emulator,
    cfg: &ringfs::emulator::Config,
    cache: &Path,
) -> BTreeMap<String, Vec<u8>> {
    let disk = DiskStore::open(cache, StoreConfig::default()).unwrap();
    let m = mount_fs(core(rt, emu, cfg, disk.clone()), rt, false);
    let first = read_every_recording(m.dir.path());
    drop(m);
    std::thread::sleep(Duration::from_millis(200));
    disk.shutdown();
    first
        .into_iter()
        .map(|(id, (_, bytes))| {
            assert_eq!(Some(&bytes), emu.recording_bytes(&id).as_ref(), "{id}");
            (id, bytes)
        })
        .collect()
}

#[test]
fn recordings_complete_on_disk_are_read_by_the_kernel_and_no_passthrough_reads_them_through_ringfs()
{
    if !can_mount() {
        return;
    }
    let cfg = quick_config(20, 3);
    let rt = runtime();
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let cache = tempfile::tempdir().unwrap();
    let want = fill_cache(&rt, &emu, &cfg, cache.path());
    assert!(want.len() >= 8, "{} recordings", want.len());

    // Passthrough: the kernel reads the cached files; no read reaches the media layer or the
    // store, and no request is spent.
    let disk = DiskStore::open(cache.path(), StoreConfig::default()).unwrap();
    let fs = core(&rt, &emu, &cfg, disk.clone());
    let m = mount_fs(fs.clone(), &rt, true);
    let files = recording_files(m.dir.path());
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    let requests = emu.stats().media();
    let before = read_counters(&fs.media().stats(), &disk.stats());
    for (id, path) in &files {
        assert!(cat(path) == want[id], "{id}: bytes through passthrough");
    }
    // Two readers of one file at once share its backing file.
    let (a, b) = files
        .values()
        .next()
        .map(|p| (p.clone(), p.clone()))
        .unwrap();
    let t = std::thread::spawn(move || cat(&a));
    let other = cat(&b);
    assert!(t.join().unwrap() == other);
    let after = read_counters(&fs.media().stats(), &disk.stats());
    assert_eq!(
        after, before,
        "no read reached ringfs: (hits, misses, disk loads, store bytes)"
    );
    assert_eq!(emu.stats().media(), requests, "no media request");
    drop(m);
    disk.shutdown();
    drop(disk);

    // --no-passthrough: the same bytes, through ordinary reads from the disk tier.
    let disk = DiskStore::open(cache.path(), StoreConfig::default()).unwrap();
    let fs = core(&rt, &emu, &cfg, disk.clone());
    let m = mount_fs(fs.clone(), &rt, false);
    let requests = emu.stats().media();
    let before = read_counters(&fs.media().stats(), &disk.stats());
    for (id, path) in recording_files(m.dir.path()) {
        assert!(cat(&path) == want[&id], "{id}: bytes through ringfs");
    }
    let after = read_counters(&fs.media().stats(), &disk.stats());
    eprintln!("passthrough off: (hits, misses, disk loads, store bytes) {before:?} -> {after:?}");
    assert!(
        after.2 > before.2 && after.3 > before.3,
        "read through ringfs from the disk tier"
    );
    assert_eq!(emu.stats().media(), requests, "no media request either");
    drop(m);
    disk.shutdown();
}

#[test]
fn eviction_while_a_passthrough_file_is_open_does_not_break_its_read() {
    if !can_mount() {
        return;
    }
    let cfg = quick_config(12, 2);
    let rt = runtime();
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let cache = tempfile::tempdir().unwrap();
    let want = fill_cache(&rt, &emu, &cfg, cache.path());
    let total: u64 = want.values().map(|b| b.len() as u64).sum();
    assert!(want.len() >= 4, "{} recordings", want.len());

    // Exactly what is held fits.
    let limits = StoreConfig {
        max_bytes: total,
        keep_free_bytes: 0,
        keep_free_percent: 0,
    };
    let disk = DiskStore::open(cache.path(), limits).unwrap();
    let fs = core(&rt, &emu, &cfg, disk.clone());
    let m = mount_fs(fs.clone(), &rt, true);
    let files = recording_files(m.dir.path());
    let (id, path) = files
        .iter()
        .max_by_key(|(id, _)| want[*id].len())
        .map(|(id, p)| (id.clone(), p.clone()))
        .unwrap();
    let len = want[&id].len();
    let before = read_counters(&fs.media().stats(), &disk.stats());

    use std::io::Read;
    let mut f = std::fs::File::open(&path).unwrap();
    let mut got = vec![0u8; len / 2];
    f.read_exact(&mut got).unwrap();

    // Another recording arrives that needs the room of every one but the open file: the store
    // evicts them all, and would take the open one too if its lease did not keep it.
    let room = total - len as u64;
    let bytes = bytes::Bytes::from(vec![7u8; room as usize]);
    rt.block_on(async {
        let mut w = disk.writer("arrival");
        w.learn(Some(room), Some("audio/mpeg"));
        let r = w.reserve(bytes.len()).await.expect("room in the queue");
        w.append(0, bytes, r);
    });
    let arrived = eventually(Duration::from_secs(10), || {
        disk.get("arrival").filter(|s| s.complete()).map(|_| ())
    });
    assert!(
        arrived.is_some(),
        "the arrival was stored: {:?}",
        disk.stats()
    );
    let stats = disk.stats();
    assert_eq!(stats.evicted as usize, want.len() - 1, "{stats:?}");
    assert!(
        disk.get(&id).is_some_and(|s| s.complete()),
        "the open file was kept"
    );

    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    got.extend(rest);
    assert!(got == want[&id], "{id}: bytes across the eviction");
    drop(f);
    let after = read_counters(&fs.media().stats(), &disk.stats());
    assert_eq!(
        after, before,
        "the kernel read it all from the backing file"
    );
    drop(m);
    disk.shutdown();
}

#[test]
fn a_mount_killed_mid_download_serves_exact_bytes_after_a_remount_and_kept_recordings_free() {
    if !can_mount() {
        return;
    }
    let mut cfg = quick_config(16, 2);
    // WAV (16 KB a second): recordings of megabytes, so a download in flight has a part synced.
    cfg.format = ringfs::emulator::AudioFormat::Wav;
    cfg.record_delay = Duration::ZERO;
    cfg.recording_delay = Duration::ZERO;
    let rt = runtime();
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let state = tmp.path().join("tokens.json");
    let log = tmp.path().join("ringfs.log");
    let mp = MountPoint(
        tempfile::Builder::new()
            .prefix("ringfs-crash-")
            .tempdir()
            .unwrap(),
    );
    let mnt = mp.0.path().to_path_buf();
    let ringfs = || {
        let mut c = ringfs_binary(&emu, &cfg, &mnt, &state, &log);
        c.arg("--cache-dir")
            .arg(&cache)
            .args(["--read-timeout", "10"]);
        c
    };

    let child = ringfs()
        .arg("-f")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = Child(Some(child));
    assert!(
        eventually(Duration::from_secs(30), || is_mounted(&mnt).then_some(())).is_some(),
        "first mount came up"
    );
    let files = recording_files(&mnt);
    assert!(files.len() >= 8, "{} recordings", files.len());
    let want: BTreeMap<String, Vec<u8>> = files
        .keys()
        .map(|id| (id.clone(), emu.recording_bytes(id).unwrap()))
        .collect();

    // The smaller half are read whole and durably complete in the index before the kill.
    let mut by_size: Vec<(String, PathBuf)> =
        files.iter().map(|(i, p)| (i.clone(), p.clone())).collect();
    by_size.sort_by_key(|(id, _)| want[id].len());
    let in_flight = by_size.split_off(by_size.len() / 2);
    let kept = by_size;
    for (id, path) in &kept {
        assert!(cat(path) == want[id], "{id}: first mount");
    }
    let durable = eventually(Duration::from_secs(10), || {
        kept.iter()
            .all(|(id, _)| {
                disk::index_row(&cache, id)
                    .ok()
                    .flatten()
                    .is_some_and(|(stored, size, _)| size == Some(stored))
            })
            .then_some(())
    });
    assert!(
        durable.is_some(),
        "the recordings read are complete in the index"
    );

    // The larger half are being downloaded, slowly, when the process is killed: after the
    // store claimed a first part of one of them (it syncs every SYNC_EVERY bytes).
    assert!(want[&in_flight[0].0].len() as u64 > 2 * disk::SYNC_EVERY);
    emu.set_faults(Faults {
        max_bytes_per_sec: Some(400 << 10),
        ..Faults::default()
    });
    let readers: Vec<_> = in_flight
        .iter()
        .map(|(_, p)| {
            let p = p.clone();
            std::thread::spawn(move || std::fs::read(p).map(|v| v.len()))
        })
        .collect();
    let partial_in_index = || {
        in_flight
            .iter()
            .filter(|(id, _)| {
                disk::index_row(&cache, id)
                    .ok()
                    .flatten()
                    .is_some_and(|(stored, size, _)| stored > 0 && size != Some(stored))
            })
            .count()
    };
    let claimed = eventually(Duration::from_secs(20), || {
        (partial_in_index() > 0).then_some(())
    });
    assert!(
        claimed.is_some(),
        "a part of a download in flight was claimed"
    );
    first.signal(libc::SIGKILL);
    assert!(first.wait(Duration::from_secs(10)).is_some(), "ringfs died");
    let mut cut = 0;
    for r in readers {
        if r.join().unwrap().is_err() {
            cut += 1;
        }
    }
    assert!(cut > 0, "some downloads were in flight at the kill");
    assert!(
        Command::new("umount")
            .arg("-l")
            .arg(&mnt)
            .status()
            .unwrap()
            .success(),
        "umount -l"
    );
    let partial = partial_in_index();
    eprintln!(
        "[persist] killed with {cut} of {} downloads in flight; {partial} partial in the index",
        in_flight.len()
    );

    // The new mount over the same cache: the kept ones cost nothing, every byte is exact.
    emu.set_faults(Faults::default());
    let out = ringfs().output().unwrap();
    assert!(
        out.status.success(),
        "remount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests = emu.stats().media();
    for (id, path) in &kept {
        assert!(
            cat(path) == want[id],
            "{id}: kept recording after the crash"
        );
    }
    assert_eq!(
        emu.stats().media(),
        requests,
        "kept recordings cost no media request"
    );
    for (id, path) in &in_flight {
        assert!(cat(path) == want[id], "{id}: recording cut by the crash");
    }
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    assert!(
        eventually(Duration::from_secs(10), || (!is_mounted(&mnt))
            .then_some(()))
        .is_some(),
        "unmounted"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("panicked"), "no panic in the log");
}

#[test]
fn a_remount_names_each_recording_with_the_format_it_was_served_in() {
    if !can_mount() {
        return;
    }
    // Some recordings MP3, some WAV: a name takes its real extension once its content type is
    // known, and a remount knows it from the disk cache, so every name stays as it was.
    let mut cfg = quick_config(40, 3);
    cfg.format = ringfs::emulator::AudioFormat::Mixed;
    let rt = runtime();
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let cache = tempfile::tempdir().unwrap();
    let state = cache.path().join("tokens.json");
    let dated = |root: &Path| -> Vec<std::path::PathBuf> {
        walk_files(root)
            .into_iter()
            .filter(|p| !p.starts_with("by-session") && !p.starts_with("by-recording"))
            .collect()
    };

    let disk = DiskStore::open(cache.path(), StoreConfig::default()).unwrap();
    let (fs, meta) = indexed_core(&rt, &emu, &cfg, disk.clone(), &state);
    let m = mount_fs(fs, &rt, false);
    read_every_recording(m.dir.path());
    let named = dated(m.dir.path());
    let exts: std::collections::BTreeSet<_> = named
        .iter()
        .filter_map(|p| p.extension().map(|e| e.to_owned()))
        .collect();
    assert!(
        exts.contains(std::ffi::OsStr::new("mp3")) && exts.contains(std::ffi::OsStr::new("wav")),
        "{exts:?}"
    );
    end(m, disk, meta);

    let disk = DiskStore::open(cache.path(), StoreConfig::default()).unwrap();
    let (fs, meta) = indexed_core(&rt, &emu, &cfg, disk.clone(), &state);
    let m = mount_fs(fs, &rt, false);
    assert_eq!(
        dated(m.dir.path()),
        named,
        "the same names after the remount, before any open"
    );
    end(m, disk, meta);
}
