//! What a mount fetched outlives it: two real mounts (root, /dev/fuse) of one emulated account
//! over the same cache directory. The second reads every recording again without one media
//! request, and gets the same bytes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ringfs::catalog::Window;
use ringfs::emulator::Emulator;
use ringfs::fs::{Fs, FsConfig};
use ringfs::media::{Media, MediaConfig};
use ringfs::store::{DiskStore, StoreConfig};

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
