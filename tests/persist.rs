//! What a mount fetched outlives it: two real mounts (root, /dev/fuse) of one emulated account
//! over the same cache directory. The second reads every recording again without one media
//! request, and gets the same bytes; with the call index, it lists past dates without a call-log
//! request, and it mounts and serves what it has when the API is unreachable.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ringfs::api::ClientConfig;
use ringfs::catalog::Window;
use ringfs::emulator::Emulator;
use ringfs::emulator::Faults;
use ringfs::fs::{Fs, FsConfig};
use ringfs::media::{Media, MediaConfig};
use ringfs::store::{DiskStore, MetaStore, StoreConfig};

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

fn mount_fs(fs: Arc<Fs>, rt: &tokio::runtime::Runtime) -> Mount {
    let dir = tempfile::Builder::new()
        .prefix("ringfs-persist-")
        .tempdir()
        .unwrap();
    let adapter = ringfs::fuse::FuseAdapter::new(fs, rt.handle().clone());
    let settings = ringfs::fuse::MountSettings {
        fsname: "ringfs-test".into(),
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
    let media = Media::with_disk(
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
    let m = mount_fs(core(&rt, &emu, &cfg, disk.clone()), &rt);
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
    let m = mount_fs(core(&rt, &emu, &cfg, disk.clone()), &rt);
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
    let media = Media::with_disk(
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
    let m = mount_fs(fs, &rt);
    let first_files = walk_files(m.dir.path());
    let first = read_every_recording(m.dir.path());
    let spent = emu.stats();
    assert!(first.len() >= 10, "{} recordings", first.len());
    end(m, disk, meta);

    emu.reset_stats();
    let disk = DiskStore::open(cache.path(), StoreConfig::default()).unwrap();
    let (fs, meta) = indexed_core(&rt, &emu, &cfg, disk.clone(), &state);
    let m = mount_fs(fs, &rt);
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
    let m = mount_fs(fs, &rt);
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
    let m = mount_fs(fs, &rt);
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

    emu.set_faults(Faults::default());
    let t = std::time::Instant::now();
    let back = eventually(Duration::from_secs(20), || {
        names_in(&m.dir.path().join(&uncached)).ok()
    });
    let back_took = t.elapsed();
    eprintln!(
        "offline: mounted after {start_took:?}, an uncached date failed after {eio_took:?}, listed {back_took:?} after the API came back"
    );
    assert!(back.is_some_and(|n| !n.is_empty()), "the mount recovered");
    end(m, disk, meta);
}
