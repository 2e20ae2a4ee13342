//! The tier below memory is a seam: an in-memory tier, written here against [`Tier`] alone, sits
//! under the media layer in place of the disk store, and the layer serves from it, writes to it
//! and opens from it as it does with the disk (see "The tier below memory").

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::fake::{FakeRecording, FakeSource, expected};
use super::tests::{cfg, key, wait_until};
use super::*;
use crate::store::Reserved;

const LEN: u64 = 300_000;

/// A tier that keeps prefixes in memory and has no local files.
#[derive(Default)]
struct MemTier {
    held: Mutex<HashMap<String, Held>>,
    /// Leases alive now (readers' and writers').
    leases: Arc<AtomicUsize>,
    reads: AtomicUsize,
}

#[derive(Clone, Default)]
struct Held {
    bytes: Vec<u8>,
    size: Option<u64>,
    content_type: Option<String>,
}

struct MemLease(Arc<AtomicUsize>);

impl Drop for MemLease {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct MemWriter {
    tier: Arc<MemTier>,
    id: String,
    _lease: TierLease,
}

impl MemTier {
    fn holding(id: &str, held: Held) -> Arc<MemTier> {
        let tier = MemTier::default();
        tier.held.lock().unwrap().insert(id.to_string(), held);
        Arc::new(tier)
    }

    fn held(&self, id: &str) -> Option<Held> {
        self.held.lock().unwrap().get(id).cloned()
    }
}

impl Tier for MemTier {
    fn get(&self, id: &str) -> Option<StoredRecording> {
        self.held(id).map(|h| StoredRecording {
            size: h.size,
            content_type: h.content_type,
            stored: h.bytes.len() as u64,
        })
    }

    fn read(&self, id: &str, offset: u64, len: usize) -> Option<Bytes> {
        let h = self.held(id)?;
        let from = offset as usize;
        if from >= h.bytes.len() {
            return None;
        }
        self.reads.fetch_add(1, Ordering::SeqCst);
        let to = (from + len).min(h.bytes.len());
        Some(Bytes::copy_from_slice(&h.bytes[from..to]))
    }

    fn lease(&self, _id: &str) -> TierLease {
        self.leases.fetch_add(1, Ordering::SeqCst);
        Box::new(MemLease(self.leases.clone()))
    }

    fn writer(self: Arc<Self>, id: &str) -> Box<dyn TierWriter> {
        let lease = self.lease(id);
        Box::new(MemWriter {
            tier: self,
            id: id.to_string(),
            _lease: lease,
        })
    }

    fn open_complete(&self, _id: &str) -> Option<CompleteFile> {
        None
    }
}

impl TierWriter for MemWriter {
    fn reserve(&self, _len: usize) -> crate::store::tier::ReserveFuture<'_> {
        Box::pin(async { Some(Reserved::new(())) })
    }

    fn append(&self, offset: u64, data: Bytes, _room: Reserved) {
        let mut held = self.tier.held.lock().unwrap();
        let h = held.entry(self.id.clone()).or_default();
        let have = h.bytes.len() as u64;
        let end = offset + data.len() as u64;
        if offset <= have && end > have {
            h.bytes.extend_from_slice(&data[(have - offset) as usize..]);
        }
    }

    fn learn(&mut self, size: Option<u64>, content_type: Option<&str>) {
        let mut held = self.tier.held.lock().unwrap();
        let h = held.entry(self.id.clone()).or_default();
        if size.is_some() {
            h.size = size;
        }
        if let Some(ct) = content_type {
            h.content_type = Some(ct.to_string());
        }
    }
}

/// A media layer over a fake serving recording `id` (seed 1, [`LEN`] bytes) and `tier`.
fn start(id: &str, tier: &Arc<MemTier>) -> (Arc<FakeSource>, Arc<Media>) {
    let fake = FakeSource::new();
    fake.add(id, FakeRecording::new(LEN, 1));
    let fake = Arc::new(fake);
    let media = Media::with_tier(fake.clone(), cfg(), Some(tier.clone() as Arc<dyn Tier>));
    (fake, media)
}

/// The tier holding the first `n` bytes of the fake's recording, its size and type known.
fn prefix(n: u64) -> Held {
    Held {
        bytes: expected(1, 0, n),
        size: Some(LEN),
        content_type: Some("audio/mpeg".into()),
    }
}

fn opens_of(fake: &FakeSource) -> Vec<u64> {
    fake.opens().into_iter().map(|(_, o)| o).collect()
}

async fn read_range(media: &Media, k: &RecordingKey, from: u64, to: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while from + (out.len() as u64) < to {
        let at = from + out.len() as u64;
        let n = (to - at).min(5000) as u32;
        let b = media
            .read(k, at, n, Priority::Interactive)
            .await
            .expect("read");
        assert!(!b.is_empty(), "short read at {at}");
        out.extend_from_slice(&b);
    }
    out
}

#[tokio::test]
async fn bytes_a_tier_holds_are_served_without_a_request() {
    let tier = MemTier::holding("a", prefix(100_000));
    let (fake, media) = start("a", &tier);
    let k = key("a");
    media.open(&k, Priority::Interactive).await.unwrap();
    assert!(read_range(&media, &k, 0, 100_000).await == expected(1, 0, 100_000));
    assert!(
        opens_of(&fake).is_empty(),
        "the tier's bytes cost no request"
    );
    assert!(media.stats().disk_reads > 0 && tier.reads.load(Ordering::SeqCst) > 0);
    // The rest: one Range request from exactly where the tier's prefix ends, written through.
    assert!(read_range(&media, &k, 100_000, LEN).await == expected(1, 100_000, LEN - 100_000));
    assert_eq!(opens_of(&fake), vec![100_000]);
    wait_until("the tier holds it all", || {
        tier.held("a").is_some_and(|h| h.bytes.len() as u64 == LEN)
    })
    .await;
    assert!(tier.held("a").unwrap().bytes == expected(1, 0, LEN));
}

#[tokio::test]
async fn bytes_streamed_are_written_to_the_tier() {
    let tier = Arc::new(MemTier::default());
    let (fake, media) = start("b", &tier);
    let k = key("b");
    media.open(&k, Priority::Interactive).await.unwrap();
    assert!(read_range(&media, &k, 0, LEN).await == expected(1, 0, LEN));
    assert_eq!(opens_of(&fake), vec![0]);
    wait_until("the tier holds it complete", || {
        tier.get("b").is_some_and(|s| s.complete())
    })
    .await;
    let held = tier.held("b").unwrap();
    assert!(held.bytes == expected(1, 0, LEN));
    assert_eq!(
        (held.size, held.content_type.as_deref()),
        (Some(LEN), Some("audio/mpeg"))
    );
}

#[tokio::test]
async fn a_recording_the_tier_holds_complete_opens_without_a_request() {
    let tier = MemTier::holding("c", prefix(LEN));
    let (fake, media) = start("c", &tier);
    let k = key("c");
    let exact = Known {
        size: Some(LEN),
        content_type: Some("audio/mpeg".into()),
    };
    assert_eq!(
        media.known("c"),
        Some(exact.clone()),
        "known before any read"
    );
    assert_eq!(media.open(&k, Priority::Interactive).await.unwrap(), exact);
    assert_eq!(tier.leases.load(Ordering::SeqCst), 1, "leased while open");
    assert!(read_range(&media, &k, 0, LEN).await == expected(1, 0, LEN));
    assert!(
        media.complete_file(&k).await.is_none(),
        "no local file to pass through"
    );
    media.close(&k);
    assert_eq!(tier.leases.load(Ordering::SeqCst), 0, "released at close");
    assert!(opens_of(&fake).is_empty(), "no request at all");
}
