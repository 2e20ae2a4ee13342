//! Tests of the disk store as the media layer's tier (see "The tier below memory" in
//! [`crate::media`]): a restart over the same cache directory is a new `Media` and a new
//! `DiskStore` on the directory the last ones left, with a fresh fake source, so its request log
//! counts only what the restarted layer spends. They live here, not in the media layer, which
//! names no concrete tier.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{DiskStore, StoreConfig, content_path, index_row};
use crate::media::fake::{FakeRecording, FakeSource, expected};
use crate::media::tests::{CS, cfg, key, read_from, wait_until};
use crate::media::{Known, Media, Priority};

fn store(dir: &Path) -> Arc<DiskStore> {
    DiskStore::open(
        dir,
        StoreConfig {
            keep_free_bytes: 0,
            keep_free_percent: 0,
            ..StoreConfig::default()
        },
    )
    .unwrap()
}

/// A media layer over a fresh fake serving `recs` and the store in `dir`.
fn start(
    dir: &Path,
    recs: &[(&str, FakeRecording)],
) -> (Arc<FakeSource>, Arc<Media>, Arc<DiskStore>) {
    let fake = FakeSource::new();
    for (id, r) in recs {
        fake.add(id, r.clone());
    }
    let fake = Arc::new(fake);
    let disk = store(dir);
    let media = Media::with_tier(fake.clone(), cfg(), Some(disk.clone()));
    (fake, media, disk)
}

/// The end of a process: the media layer goes, its downloads with it, and the store writes out
/// what was queued.
async fn stop(media: Arc<Media>, disk: Arc<DiskStore>) {
    drop(media);
    // Let the aborted download tasks drop their writers (each one's end is queued).
    tokio::time::sleep(Duration::from_millis(20)).await;
    tokio::task::spawn_blocking(move || disk.shutdown())
        .await
        .unwrap();
}

fn opens_of(fake: &FakeSource) -> Vec<u64> {
    fake.opens().into_iter().map(|(_, o)| o).collect()
}

#[tokio::test]
async fn a_recording_read_once_is_read_from_disk_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let len = 300_000;
    let recs = [("a b/1", FakeRecording::new(len, 1))];
    let k = key("a b/1");
    let (fake, media, disk) = start(tmp.path(), &recs);
    media.open(&k, Priority::Interactive).await.unwrap();
    assert!(read_from(&media, &k, 0, 5000).await == expected(1, 0, len));
    media.close(&k);
    assert_eq!(opens_of(&fake), vec![0]);
    stop(media, disk).await;
    assert_eq!(
        index_row(tmp.path(), "a b/1").unwrap().map(|r| (r.0, r.1)),
        Some((len, Some(len))),
        "complete on disk"
    );

    let (fake, media, disk) = start(tmp.path(), &recs);
    let exact = Known {
        size: Some(len),
        content_type: Some("audio/mpeg".into()),
    };
    assert_eq!(
        media.known("a b/1"),
        Some(exact.clone()),
        "known before any read"
    );
    assert_eq!(media.open(&k, Priority::Interactive).await.unwrap(), exact);
    assert!(read_from(&media, &k, 0, 5000).await == expected(1, 0, len));
    // A seek back and a re-read.
    let got = media
        .read(&k, 123_456, 10_000, Priority::Interactive)
        .await
        .unwrap();
    assert!(got[..] == expected(1, 123_456, 10_000)[..]);
    media.close(&k);
    assert_eq!(
        opens_of(&fake),
        Vec::<u64>::new(),
        "no request after the restart"
    );
    assert!(media.stats().disk_reads > 0);
    assert_eq!(disk.stats().discarded, 0);
    stop(media, disk).await;
}

#[tokio::test]
async fn a_half_read_recording_resumes_with_one_request_from_the_stored_end() {
    let tmp = tempfile::tempdir().unwrap();
    let len = 300_000;
    let held = 150_000; // not on a chunk boundary
    assert!(held % CS as u64 != 0);
    let recs = [("a", FakeRecording::new(len, 2))];
    let k = key("a");
    let (fake, media, disk) = start(tmp.path(), &recs);
    fake.set_limit(Some(held));
    let got = media
        .read(&k, 0, 100_000, Priority::Interactive)
        .await
        .unwrap();
    assert!(got[..] == expected(2, 0, 100_000)[..]);
    wait_until("the held bytes are written", || {
        disk.get("a").is_some_and(|s| s.stored == held)
    })
    .await;
    stop(media, disk).await;
    assert_eq!(index_row(tmp.path(), "a").unwrap().map(|r| r.0), Some(held));

    let (fake, media, disk) = start(tmp.path(), &recs);
    assert_eq!(
        media.known("a").and_then(|k| k.size),
        Some(len),
        "the size is known before any read"
    );
    media.open(&k, Priority::Interactive).await.unwrap();
    assert!(opens_of(&fake).is_empty(), "open needs no request");
    assert!(read_from(&media, &k, 0, 7000).await == expected(2, 0, len));
    assert_eq!(
        opens_of(&fake),
        vec![held],
        "one Range request from the end of what is stored"
    );
    assert_eq!(
        fake.bytes_sent(),
        len - held,
        "no stored byte fetched again"
    );
    media.close(&k);
    stop(media, disk).await;
    // The rest was written through: the recording is now complete on disk.
    assert_eq!(index_row(tmp.path(), "a").unwrap().map(|r| r.0), Some(len));
}

#[tokio::test]
async fn a_damaged_cached_file_is_fetched_again() {
    let tmp = tempfile::tempdir().unwrap();
    let len = 200_000;
    let recs = [("a", FakeRecording::new(len, 3))];
    let k = key("a");
    let (_fake, media, disk) = start(tmp.path(), &recs);
    assert!(read_from(&media, &k, 0, 4096).await == expected(3, 0, len));
    stop(media, disk).await;
    let p = content_path(tmp.path(), "a");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[150_000] ^= 1;
    std::fs::write(&p, bytes).unwrap();

    let (fake, media, disk) = start(tmp.path(), &recs);
    media.open(&k, Priority::Interactive).await.unwrap();
    assert!(
        read_from(&media, &k, 0, 4096).await == expected(3, 0, len),
        "the right bytes, never the damaged ones"
    );
    assert_eq!(opens_of(&fake), vec![0], "fetched again, once");
    assert_eq!(disk.stats().discarded, 1);
    media.close(&k);
    stop(media, disk).await;
    let (stored, _, crc) = index_row(tmp.path(), "a").unwrap().unwrap();
    assert_eq!(
        (stored, crc),
        (len, crc32fast::hash(&expected(3, 0, len))),
        "and stored again, right"
    );
}

#[tokio::test]
async fn a_download_past_the_stored_prefix_does_not_write() {
    let tmp = tempfile::tempdir().unwrap();
    let len = 400_000;
    let recs = [("a", FakeRecording::new(len, 4))];
    let k = key("a");
    let (fake, media, disk) = start(tmp.path(), &recs);
    // A far seek first: its download starts at 256 KiB, where nothing is stored before it.
    let far = 16 * CS as u64;
    let got = media
        .read(&k, far, 1000, Priority::Interactive)
        .await
        .unwrap();
    assert!(got[..] == expected(4, far, 1000)[..]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(disk.get("a"), None, "nothing contiguous from 0 to store");
    // Then from the start: that download writes.
    let got = media
        .read(&k, 0, 1000, Priority::Interactive)
        .await
        .unwrap();
    assert!(got[..] == expected(4, 0, 1000)[..]);
    wait_until("the start is stored", || {
        disk.get("a").is_some_and(|s| s.stored > 0)
    })
    .await;
    assert_eq!(opens_of(&fake), vec![far, 0]);
    stop(media, disk).await;
    let (stored, _, crc) = index_row(tmp.path(), "a").unwrap().unwrap();
    assert_eq!(crc, crc32fast::hash(&expected(4, 0, stored)));
}
