//! Unit tests of the disk store: what is written comes back after a reopen, files are private,
//! damage is discarded, the limits evict least recently used recordings but never a leased one,
//! and a write error degrades instead of failing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use super::*;

/// Deterministic content: the bytes `[offset, offset + len)` of a recording made from `seed`.
fn expected(seed: u64, offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len)
        .map(|o| {
            ((o ^ seed.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ o as u8
        })
        .collect()
}

const ID: &str = "rec 1/with slash";

fn unlimited() -> StoreConfig {
    StoreConfig {
        max_bytes: u64::MAX,
        keep_free_bytes: 0,
        keep_free_percent: 0,
    }
}

/// Writes `[from, to)` of the fake content `seed` for `id` in pieces of 4000 bytes through one
/// writer that knows the size `size`, then drops the writer (the download ends).
async fn write(store: &Arc<DiskStore>, id: &str, seed: u64, from: u64, to: u64, size: Option<u64>) {
    let mut w = store.writer(id);
    w.learn(size, Some("audio/mpeg"));
    let mut at = from;
    while at < to {
        let n = (to - at).min(4000);
        // No room: the store does not write this recording (any more), as for a download.
        if let Some(room) = w.reserve(n as usize).await {
            w.append(at, Bytes::from(expected(seed, at, n)), room);
        }
        at += n;
    }
}

/// Waits until the writer has taken in `stored` bytes of `id`.
async fn until_stored(store: &DiskStore, id: &str, stored: u64) {
    for _ in 0..1000 {
        if store.get(id).is_some_and(|s| s.stored >= stored) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{id}: {stored} bytes never stored: {:?}", store.get(id));
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn written_content_is_complete_after_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let len = 300_000;
    {
        let store = DiskStore::open(&dir, unlimited()).unwrap();
        write(&store, ID, 7, 0, len, Some(len)).await;
        until_stored(&store, ID, len).await;
        assert_eq!(store.read(ID, 1000, 500).unwrap(), expected(7, 1000, 500));
        store.shutdown();
    }
    let (stored, size, crc) = index_row(&dir, ID).unwrap().expect("row");
    assert_eq!((stored, size), (len, Some(len)));
    assert_eq!(crc, crc32fast::hash(&expected(7, 0, len)));
    let store = DiskStore::open(&dir, unlimited()).unwrap();
    let got = store.get(ID).unwrap();
    assert!(got.complete());
    assert_eq!(got.content_type.as_deref(), Some("audio/mpeg"));
    assert_eq!(
        store.read(ID, 0, len as usize + 10).unwrap(),
        expected(7, 0, len)
    );
    assert_eq!(store.read(ID, len, 10), None, "nothing past the end");
    assert_eq!(store.stats().discarded, 0);
}

#[tokio::test]
async fn a_partial_recording_resumes_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let len = 100_000;
    {
        let store = DiskStore::open(tmp.path(), unlimited()).unwrap();
        write(&store, "a", 3, 0, 40_000, None).await;
        // Bytes past a gap are not stored: the prefix stays contiguous.
        write(&store, "a", 3, 60_000, 70_000, None).await;
        store.shutdown();
    }
    assert_eq!(
        index_row(tmp.path(), "a").unwrap().map(|r| r.0),
        Some(40_000)
    );
    {
        let store = DiskStore::open(tmp.path(), unlimited()).unwrap();
        let got = store.get("a").unwrap();
        assert_eq!(
            (got.stored, got.size, got.complete()),
            (40_000, None, false)
        );
        // A download resuming a little before the end of the stored prefix: the overlap is skipped.
        write(&store, "a", 3, 36_000, len, Some(len)).await;
        until_stored(&store, "a", len).await;
        store.shutdown();
    }
    let store = DiskStore::open(tmp.path(), unlimited()).unwrap();
    assert!(store.get("a").unwrap().complete());
    assert_eq!(
        store.read("a", 0, len as usize).unwrap(),
        expected(3, 0, len)
    );
    assert_eq!(
        store.stats().discarded,
        0,
        "the checksum of the resumed content holds"
    );
}

#[tokio::test]
async fn the_directory_is_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b");
    let store = DiskStore::open(&dir, unlimited()).unwrap();
    write(&store, ID, 1, 0, 5000, Some(5000)).await;
    until_stored(&store, ID, 5000).await;
    store.shutdown();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("recordings")), 0o700);
    let mut files = 0;
    for name in [
        "lock",
        "index.sqlite",
        "index.sqlite-wal",
        "index.sqlite-shm",
    ] {
        let p = dir.join(name);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{name}");
            files += 1;
        }
    }
    assert!(files >= 2);
    let content = content_path(&dir, ID);
    assert_eq!(mode(&content), 0o600);
    assert!(
        !content.file_name().unwrap().to_string_lossy().contains(' '),
        "named by a hash of the id"
    );
    // A second process on the same directory is refused (it would interleave writes).
    drop(store);
    let first = DiskStore::open(&dir, unlimited()).unwrap();
    assert!(DiskStore::open(&dir, unlimited()).is_err());
    drop(first);
}

#[tokio::test]
async fn a_truncated_file_and_a_flipped_byte_are_discarded() {
    let tmp = tempfile::tempdir().unwrap();
    let len = 50_000;
    {
        let store = DiskStore::open(tmp.path(), unlimited()).unwrap();
        write(&store, "short", 1, 0, len, Some(len)).await;
        write(&store, "flipped", 2, 0, len, Some(len)).await;
        write(&store, "fine", 3, 0, len, Some(len)).await;
        for id in ["short", "flipped", "fine"] {
            until_stored(&store, id, len).await;
        }
        store.shutdown();
    }
    let f = OpenOptions::new()
        .write(true)
        .open(content_path(tmp.path(), "short"))
        .unwrap();
    f.set_len(len - 1).unwrap();
    let p = content_path(tmp.path(), "flipped");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[12_345] ^= 0x40;
    std::fs::write(&p, bytes).unwrap();

    let store = DiskStore::open(tmp.path(), unlimited()).unwrap();
    assert_eq!(
        store.get("short"),
        None,
        "shorter than the index says: gone at open"
    );
    assert!(!content_path(tmp.path(), "short").exists());
    assert_eq!(store.stats().discarded, 1);
    assert!(
        store.get("flipped").is_some(),
        "a checksum is checked at first use"
    );
    assert_eq!(store.read("flipped", 20_000, 10), None, "never served");
    assert_eq!(store.get("flipped"), None);
    assert!(!p.exists());
    assert_eq!(store.stats().discarded, 2);
    assert_eq!(
        store.read("fine", 0, len as usize).unwrap(),
        expected(3, 0, len)
    );
    store.shutdown();
    assert_eq!(
        index_row(tmp.path(), "flipped").unwrap(),
        None,
        "the row went with the file"
    );
}

#[tokio::test]
async fn the_index_never_claims_bytes_the_file_does_not_hold() {
    // Whenever the index is looked at (as after a kill -9 at that instant), the bytes it claims
    // are in the file and match the checksum it records.
    let tmp = tempfile::tempdir().unwrap();
    let store = DiskStore::open(tmp.path(), unlimited()).unwrap();
    let len = 3 * SYNC_EVERY + 12_345;
    let writing = {
        let store = store.clone();
        tokio::spawn(async move { write(&store, "a", 5, 0, len, Some(len)).await })
    };
    let content = expected(5, 0, len);
    let mut seen = std::collections::BTreeSet::new();
    while seen.last() != Some(&len) {
        if let Some((stored, _, crc)) = index_row(tmp.path(), "a").unwrap() {
            let on_disk = std::fs::metadata(content_path(tmp.path(), "a"))
                .unwrap()
                .len();
            assert!(
                on_disk >= stored,
                "index claims {stored}, file holds {on_disk}"
            );
            assert_eq!(
                crc,
                crc32fast::hash(&content[..stored as usize]),
                "at {stored}"
            );
            seen.insert(stored);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    writing.await.unwrap();
    assert!(
        seen.len() >= 2,
        "the index was updated along the way: {seen:?}"
    );
}

#[tokio::test]
async fn the_size_cap_evicts_least_recently_used_but_not_a_leased_one() {
    let tmp = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        max_bytes: 30_000,
        ..unlimited()
    };
    let store = DiskStore::open(tmp.path(), config.clone()).unwrap();
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        write(&store, id, i as u64, 0, 10_000, Some(10_000)).await;
        until_stored(&store, id, 10_000).await;
    }
    // "a" is the least recently used, but open.
    let lease = store.lease("a");
    store.read("c", 0, 10);
    write(&store, "d", 9, 0, 10_000, Some(10_000)).await;
    until_stored(&store, "d", 10_000).await;
    assert!(store.get("a").is_some(), "leased: kept");
    assert_eq!(store.get("b"), None, "least recently used of the others");
    assert!(store.get("c").is_some());
    assert!(!content_path(tmp.path(), "b").exists());
    assert_eq!(store.stats().evicted, 1);
    assert!(store.stats().bytes <= 30_000);
    drop(lease);
    write(&store, "e", 10, 0, 10_000, Some(10_000)).await;
    until_stored(&store, "e", 10_000).await;
    assert_eq!(
        store.get("a"),
        None,
        "no longer leased: the least recently used goes"
    );
    store.shutdown();
    drop(store);
    // A lower cap at the next open evicts down to it.
    let store = DiskStore::open(
        tmp.path(),
        StoreConfig {
            max_bytes: 15_000,
            ..config
        },
    )
    .unwrap();
    assert_eq!(store.stats().recordings, 1);
    assert!(store.get("e").is_some(), "the most recent stays");
}

/// A tmpfs mounted for one test, unmounted (lazily, so an open file cannot keep it) on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_stops_writing_that_recording_and_nothing_fails() {
    let Some(fs) = Tmpfs::mount("1M") else {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    };
    let dir = fs.0.path().join("cache");
    let store = DiskStore::open(&dir, unlimited()).unwrap();
    let len = 2 << 20;
    // Every append is accepted (the download never sees the disk's trouble)...
    write(&store, "big", 4, 0, len, Some(len)).await;
    for _ in 0..1000 {
        if store.stats().write_errors > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ...and the first failure stops writing it, once.
    let s = store.stats();
    assert_eq!(s.write_errors, 1, "{s:?}");
    assert!(s.bytes_written < len, "{s:?}");
    let held = store.get("big").map_or(0, |r| r.stored);
    if held > 0 {
        assert_eq!(
            store.read("big", 0, held as usize).unwrap(),
            expected(4, 0, held)
        );
    }
    // Later downloads of it are not written at all.
    let w = store.writer("big");
    assert!(w.reserve(10).await.is_none());
    drop(w);
    // The disk is still full: another recording fails the same way, quietly.
    write(&store, "small", 5, 0, 8000, Some(8000)).await;
    for _ in 0..1000 {
        if store.stats().write_errors > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(store.stats().write_errors, 2);
    assert!(store.get("small").is_none_or(|r| !r.complete()));
    store.shutdown();
    drop(store);
    let store = DiskStore::open(&dir, unlimited()).unwrap();
    if let Some(r) = store.get("big") {
        assert!(r.stored < len);
        assert_eq!(
            store.read("big", 0, r.stored as usize).unwrap(),
            expected(4, 0, r.stored)
        );
    }
    assert_eq!(
        store.stats().discarded,
        0,
        "what the index claims was durable"
    );
    drop(store);
    drop(fs);
}

#[tokio::test]
async fn complete_files_are_checked_and_leased_and_clear_empties_the_store() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let len = 60_000;
    {
        let store = DiskStore::open(tmp.path(), unlimited()).unwrap();
        write(&store, "whole", 1, 0, len, Some(len)).await;
        write(&store, "flipped", 2, 0, len, Some(len)).await;
        write(&store, "part", 3, 0, 20_000, None).await;
        until_stored(&store, "whole", len).await;
        until_stored(&store, "flipped", len).await;
        until_stored(&store, "part", 20_000).await;
        // Written by this process: no check needed, served at once.
        assert!(store.open_complete("whole").is_some());
        assert!(store.open_complete("part").is_none(), "a prefix only");
        assert!(store.open_complete("nothing").is_none());
        assert!(in_use(tmp.path()), "the store holds the directory's lock");
        store.shutdown();
    }
    assert!(!in_use(tmp.path()));
    assert_eq!(
        summary(tmp.path()).unwrap(),
        Some(Summary {
            complete: 2,
            partial: 1,
            bytes: 2 * len + 20_000
        })
    );
    let p = content_path(tmp.path(), "flipped");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[777] ^= 1;
    std::fs::write(&p, bytes).unwrap();

    let store = DiskStore::open(tmp.path(), unlimited()).unwrap();
    assert!(
        store.open_complete("flipped").is_none(),
        "checked before it is handed out"
    );
    assert_eq!(store.get("flipped"), None, "and discarded");
    let mut f = store.open_complete("whole").expect("complete and checked");
    assert_eq!(f.size, len);
    let mut got = Vec::new();
    f.file.read_to_end(&mut got).unwrap();
    assert_eq!(got, expected(1, 0, len));
    assert_eq!(store.stats().bytes_read, 0, "a check is not a read");
    // The open file is leased: clear keeps it, and takes the rest.
    assert_eq!(store.clear(), (1, 20_000));
    assert!(store.get("whole").is_some() && store.get("part").is_none());
    drop(f);
    assert_eq!(store.clear(), (1, len));
    store.shutdown();
    assert_eq!(summary(tmp.path()).unwrap(), Some(Summary::default()));
    assert_eq!(
        std::fs::read_dir(tmp.path().join("recordings"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(summary(&tmp.path().join("none")).unwrap(), None);
}
