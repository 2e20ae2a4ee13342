//! The bucket as a tier below the disk (a publisher's mount).
//!
//! [`Tier::get`] answers from what the bucket is known to hold ([`Bucket::held`]: the listing
//! taken at start and refreshed every [`REFRESH`], plus this mount's own PUTs), so a recording
//! the bucket holds is read from it with ranged GETs ([`Tier::read`]) and costs RingCentral
//! nothing. A recording the bucket lacks is fetched from RingCentral by the media layer as
//! usual; its writer keeps the download's bytes in memory, and when the download ends with the
//! whole content (contiguous from byte 0, the length RingCentral stated, an audio type), the
//! recording is queued for one PUT. An uploader task sends the queue in order; a PUT that fails
//! is retried with a backoff (the first failure of an outage is logged, and the recovery), and
//! a read never waits for, or fails because of, any of it.
//!
//! Memory: the bytes held by writers and the queue together stay under `max_pending` (a writer
//! that would go past it stops taking its recording, which is then published by a later fetch
//! or by `ringfs archive`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::Bucket;
use crate::catalog::AudioKind;
use crate::store::{
    CompleteFile, Reserved, StoredRecording, Tier, TierLease, TierWriter, tier::ReserveFuture,
};

/// How often the listing of what the bucket holds is taken again (other publishers' PUTs).
pub const REFRESH: Duration = Duration::from_secs(60);

/// First wait before a failed PUT is tried again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// One recording waiting for its PUT.
struct Job {
    id: String,
    content_type: String,
    data: Bytes,
}

/// The bucket below the disk. See the module docs.
pub struct BucketTier {
    bucket: Arc<Bucket>,
    rt: Handle,
    queue: mpsc::UnboundedSender<Job>,
    /// Bytes held by writers and the queue.
    pending: Arc<AtomicU64>,
    max_pending: u64,
    /// Logged once: a writer refused for the memory bound.
    full_logged: AtomicBool,
    /// Jobs queued or being sent (for [`BucketTier::flush`]).
    in_flight: Arc<AtomicU64>,
}

impl BucketTier {
    /// A tier over `bucket`; its uploader and its refresh run on `rt` until the tier is dropped.
    pub fn new(bucket: Arc<Bucket>, rt: Handle, max_pending: u64) -> Arc<BucketTier> {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(AtomicU64::new(0));
        rt.spawn(upload(
            bucket.clone(),
            rx,
            pending.clone(),
            in_flight.clone(),
        ));
        let weak = Arc::downgrade(&bucket);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(REFRESH).await;
                let Some(b) = weak.upgrade() else { return };
                if Arc::strong_count(&b) <= 2 {
                    return; // only the uploader and us: the tier is gone
                }
                if let Err(e) = b.refresh().await {
                    tracing::debug!("listing the bucket: {e}");
                }
            }
        });
        Arc::new(BucketTier {
            bucket,
            rt,
            queue: tx,
            pending,
            max_pending,
            full_logged: AtomicBool::new(false),
            in_flight,
        })
    }

    pub fn bucket(&self) -> &Arc<Bucket> {
        &self.bucket
    }

    /// Waits until every queued recording was written (or `limit` passed); `true` if all were.
    pub async fn flush(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.in_flight.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Recordings queued or being written.
    pub fn queued(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// Sends the queue, in order; failed PUTs wait a backoff and go again.
async fn upload(
    bucket: Arc<Bucket>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    pending: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
) {
    let mut retry: VecDeque<Job> = VecDeque::new();
    let mut delay = RETRY_FIRST;
    let mut failing = false;
    loop {
        let job = match retry.pop_front() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        if bucket.held(&job.id).is_some() {
            // Another publisher's copy (seen by a refresh) or a duplicate job.
            done(&job, &pending, &in_flight);
            continue;
        }
        match bucket
            .put_recording(&job.id, &job.content_type, job.data.clone())
            .await
        {
            Ok(()) => {
                if failing {
                    tracing::info!("publishing to {} again", bucket.url());
                    failing = false;
                }
                delay = RETRY_FIRST;
                tracing::debug!("published recording {} ({} bytes)", job.id, job.data.len());
                done(&job, &pending, &in_flight);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        "publishing to {} failed ({e}); recordings stay queued and are tried again",
                        bucket.url()
                    );
                    failing = true;
                }
                retry.push_front(job);
                // New jobs keep arriving meanwhile; they wait behind the one being retried.
                while let Ok(j) = rx.try_recv() {
                    retry.push_back(j);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

fn done(job: &Job, pending: &AtomicU64, in_flight: &AtomicU64) {
    pending.fetch_sub(job.data.len() as u64, Ordering::AcqRel);
    in_flight.fetch_sub(1, Ordering::AcqRel);
}

impl Tier for BucketTier {
    fn get(&self, id: &str) -> Option<StoredRecording> {
        self.bucket.held(id).map(|h| StoredRecording {
            size: Some(h.size),
            content_type: Some(h.content_type),
            stored: h.size,
        })
    }

    fn read(&self, id: &str, offset: u64, len: usize) -> Option<Bytes> {
        let held = self.bucket.held(id)?;
        if offset >= held.size || len == 0 {
            return None;
        }
        let bucket = self.bucket.clone();
        let id = id.to_string();
        let r = self.rt.block_on(async move {
            let mut body = bucket
                .get_recording(&id, &held, offset, Some(len as u64))
                .await?;
            let mut out = BytesMut::new();
            while let Some(piece) = body.stream.next().await {
                let piece = piece.map_err(|e| super::BucketError::from_store(id.clone(), e))?;
                out.extend_from_slice(&piece);
            }
            Ok::<_, super::BucketError>(out.freeze())
        });
        match r {
            Ok(b) if !b.is_empty() => Some(b),
            Ok(_) => None,
            Err(e) => {
                // A tier that fails is a tier that holds nothing: the media layer fetches.
                tracing::debug!("reading from the bucket: {e}");
                None
            }
        }
    }

    fn lease(&self, _id: &str) -> TierLease {
        // Objects are never evicted.
        Box::new(())
    }

    fn writer(self: Arc<Self>, id: &str) -> Box<dyn TierWriter> {
        let taking = self.bucket.held(id).is_none() && super::valid_id(id);
        Box::new(BucketWriter {
            tier: self,
            id: id.to_string(),
            state: Mutex::new(Buffer {
                data: BytesMut::new(),
                broken: !taking,
            }),
            size: None,
            content_type: None,
        })
    }

    fn open_complete(&self, _id: &str) -> Option<CompleteFile> {
        None
    }
}

struct Buffer {
    data: BytesMut,
    /// Not taking this recording (held already, a gap, the memory bound).
    broken: bool,
}

/// One download's bytes, kept until it ends; then the recording is queued if it is whole.
struct BucketWriter {
    tier: Arc<BucketTier>,
    id: String,
    state: Mutex<Buffer>,
    size: Option<u64>,
    content_type: Option<String>,
}

impl TierWriter for BucketWriter {
    fn reserve(&self, _len: usize) -> ReserveFuture<'_> {
        // Bytes are counted (and bounded) as they are appended; reserving never waits, so the
        // bucket never slows a download down.
        let taking = !self.state.lock().unwrap().broken;
        Box::pin(async move { taking.then(|| Reserved::new(())) })
    }

    fn append(&self, offset: u64, data: Bytes, room: Reserved) {
        drop(room);
        let mut s = self.state.lock().unwrap();
        if s.broken {
            return;
        }
        let have = s.data.len() as u64;
        if offset > have {
            // A gap (a download started past what this writer saw): not a whole recording.
            self.release(&mut s);
            return;
        }
        let skip = (have - offset) as usize;
        if skip >= data.len() {
            return;
        }
        let add = (data.len() - skip) as u64;
        let after = self.tier.pending.fetch_add(add, Ordering::AcqRel) + add;
        if after > self.tier.max_pending {
            self.tier.pending.fetch_sub(add, Ordering::AcqRel);
            if !self.tier.full_logged.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    "the queue of recordings to publish is full; recording {} is not published \
                     by this fetch (later ones may be)",
                    self.id
                );
            }
            self.release(&mut s);
            return;
        }
        s.data.extend_from_slice(&data[skip..]);
    }

    fn learn(&mut self, size: Option<u64>, content_type: Option<&str>) {
        if size.is_some() {
            self.size = size;
        }
        if let Some(ct) = content_type {
            self.content_type = Some(ct.to_string());
        }
    }
}

impl BucketWriter {
    /// Stops taking the recording and gives back what its buffer counted.
    fn release(&self, s: &mut Buffer) {
        s.broken = true;
        self.tier
            .pending
            .fetch_sub(s.data.len() as u64, Ordering::AcqRel);
        s.data = BytesMut::new();
    }
}

impl Drop for BucketWriter {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap();
        // What this writer counted in `pending`: everything it holds.
        let counted = s.data.len() as u64;
        let whole = !s.broken
            && self.size == Some(counted)
            && counted > 0
            && self
                .content_type
                .as_deref()
                .is_some_and(|t| AudioKind::from_content_type(t).is_some());
        let data = std::mem::take(&mut s.data).freeze();
        if whole {
            self.tier.in_flight.fetch_add(1, Ordering::AcqRel);
            let job = Job {
                id: self.id.clone(),
                content_type: self.content_type.clone().unwrap_or_default(),
                data,
            };
            if let Err(e) = self.tier.queue.send(job) {
                self.tier.in_flight.fetch_sub(1, Ordering::AcqRel);
                self.tier
                    .pending
                    .fetch_sub(e.0.data.len() as u64, Ordering::AcqRel);
            }
        } else {
            self.tier.pending.fetch_sub(counted, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Priority;
    use crate::media::fake::{FakeRecording, FakeSource, expected};
    use crate::media::{Media, MediaConfig, RecordingKey};
    use crate::shared::{BucketUrl, Held};

    const LEN: u64 = 700_000;

    fn key(id: &str) -> RecordingKey {
        RecordingKey {
            id: id.into(),
            content_uri: format!("https://media.example/{id}"),
        }
    }

    fn config() -> MediaConfig {
        MediaConfig {
            cache_bytes: 8 << 20,
            read_timeout: Duration::from_secs(5),
            ..MediaConfig::default()
        }
    }

    async fn read_whole(media: &Media, id: &str) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = media
                .read(&key(id), out.len() as u64, 100_000, Priority::Interactive)
                .await
                .unwrap();
            if b.is_empty() {
                return out;
            }
            out.extend_from_slice(&b);
        }
    }

    fn bucket(store: &Arc<object_store::memory::InMemory>) -> Arc<Bucket> {
        Arc::new(Bucket::with_store(
            store.clone(),
            BucketUrl::parse("s3://team/calls").unwrap(),
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_recording_fetched_whole_is_put_once_and_read_from_the_bucket_after() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let b = bucket(&store);
        let tier = BucketTier::new(b.clone(), Handle::current(), 64 << 20);
        let source = Arc::new(FakeSource::new());
        source.add("1001", FakeRecording::new(LEN, 7));
        let media = Media::with_tier(source.clone(), config(), Some(tier.clone() as _));
        assert_eq!(read_whole(&media, "1001").await, expected(7, 0, LEN));
        assert_eq!(source.opens().len(), 1);
        assert!(tier.flush(Duration::from_secs(5)).await);
        assert_eq!(b.stats().recordings_put, 1);
        assert_eq!(
            b.held("1001"),
            Some(Held {
                size: LEN,
                content_type: "audio/mpeg".into()
            })
        );

        // The object: its type, and the checksum and size of its content as metadata.
        let object = object_store::ObjectStoreExt::get(
            store.as_ref(),
            &object_store::path::Path::from("calls/v1/recordings/1001.mp3"),
        )
        .await
        .unwrap();
        let attr = |a: object_store::Attribute| object.attributes.get(&a).map(|v| v.to_string());
        assert_eq!(
            attr(object_store::Attribute::ContentType).as_deref(),
            Some("audio/mpeg")
        );
        let sha = super::super::hex(
            ring::digest::digest(&ring::digest::SHA256, &expected(7, 0, LEN)).as_ref(),
        );
        assert_eq!(
            attr(object_store::Attribute::Metadata("sha256".into())),
            Some(sha)
        );
        assert_eq!(
            attr(object_store::Attribute::Metadata("size".into())),
            Some(LEN.to_string())
        );

        // Another mount (a new process): it lists the bucket and reads from it, no request.
        let b2 = bucket(&store);
        assert_eq!(b2.refresh().await.unwrap(), 1);
        let tier2 = BucketTier::new(b2.clone(), Handle::current(), 64 << 20);
        let source2 = Arc::new(FakeSource::new());
        source2.add("1001", FakeRecording::new(LEN, 7));
        let media2 = Media::with_tier(source2.clone(), config(), Some(tier2.clone() as _));
        assert_eq!(read_whole(&media2, "1001").await, expected(7, 0, LEN));
        assert!(source2.opens().is_empty(), "{:?}", source2.opens());
        assert!(b2.stats().recording_gets >= 1);
        assert!(tier2.flush(Duration::from_secs(1)).await);
        assert_eq!(b2.stats().recordings_put, 0, "nothing written twice");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_part_of_a_recording_or_an_unknown_type_is_never_put() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let b = bucket(&store);
        let tier = BucketTier::new(b.clone(), Handle::current(), 64 << 20);
        let source = Arc::new(FakeSource::new());
        // Longer than the read-ahead: the download pauses, and stops at the close.
        source.add("1002", FakeRecording::new(6 << 20, 8));
        let mut odd = FakeRecording::new(LEN, 9);
        odd.content_type = Some("text/html".into());
        source.add("1003", odd);
        let media = Media::with_tier(source.clone(), config(), Some(tier.clone() as _));
        // The start of one (then closed), the whole of the other.
        let k = key("1002");
        media
            .read(&k, 0, 1000, Priority::Interactive)
            .await
            .unwrap();
        media.close(&k);
        let _ = read_whole(&media, "1003").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(tier.flush(Duration::from_secs(5)).await);
        assert_eq!(b.stats().recordings_put, 0);
        assert_eq!(b.refresh().await.unwrap(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stack_reads_what_the_bucket_holds_and_keeps_it_on_disk() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let b = bucket(&store);
        b.put_recording("1004", "audio/mpeg", expected(4, 0, LEN).into())
            .await
            .unwrap();
        let b = bucket(&store);
        b.refresh().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let disk = crate::store::DiskStore::open(dir.path(), Default::default()).unwrap();
        let tier = BucketTier::new(b.clone(), Handle::current(), 64 << 20);
        let stack = crate::store::Stack::new(disk.clone(), tier);
        let source = Arc::new(FakeSource::new());
        source.add("1004", FakeRecording::new(LEN, 4));
        let media = Media::with_tier(source.clone(), config(), Some(stack as _));
        assert_eq!(read_whole(&media, "1004").await, expected(4, 0, LEN));
        assert!(source.opens().is_empty(), "{:?}", source.opens());
        // The bytes read from the bucket went to the disk as well.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !disk.get("1004").is_some_and(|s| s.complete()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                disk.get("1004")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let gets = b.stats().recording_gets;
        // A new media layer over the same stack reads from the disk: no bucket request.
        let media2 = Media::with_tier(
            source.clone(),
            config(),
            Some(crate::store::Stack::new(
                disk.clone(),
                BucketTier::new(b.clone(), Handle::current(), 64 << 20),
            ) as _),
        );
        assert_eq!(read_whole(&media2, "1004").await, expected(4, 0, LEN));
        assert_eq!(b.stats().recording_gets, gets);
        disk.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_the_disk_holds_complete_reaches_the_bucket_however_it_was_fetched() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let dir = tempfile::tempdir().unwrap();
        let source = Arc::new(FakeSource::new());
        source.add("2001", FakeRecording::new(LEN, 21));
        source.add("2002", FakeRecording::new(6 << 20, 22));
        // A mount without the bucket: one recording read whole, the other's start only.
        let disk = crate::store::DiskStore::open(dir.path(), Default::default()).unwrap();
        let media = Media::with_tier(source.clone(), config(), Some(disk.clone() as _));
        let _ = read_whole(&media, "2001").await;
        let k = key("2002");
        media
            .read(&k, 0, 1000, Priority::Interactive)
            .await
            .unwrap();
        media.close(&k);
        drop(media);
        tokio::time::sleep(Duration::from_millis(300)).await;
        disk.shutdown();
        drop(disk);

        // The next mount stacks the bucket below that disk and reads both.
        let disk = crate::store::DiskStore::open(dir.path(), Default::default()).unwrap();
        let partial = disk.get("2002").unwrap();
        assert!(partial.stored > 0 && !partial.complete(), "{partial:?}");
        let b = bucket(&store);
        let tier = BucketTier::new(b.clone(), Handle::current(), 64 << 20);
        let stack = crate::store::Stack::new(disk.clone(), tier.clone());
        let media = Media::with_tier(source.clone(), config(), Some(stack as _));
        let opens = source.opens().len();
        assert_eq!(read_whole(&media, "2001").await, expected(21, 0, LEN));
        assert_eq!(read_whole(&media, "2002").await, expected(22, 0, 6 << 20));
        assert_eq!(
            source.opens().len(),
            opens + 1,
            "one request: the rest of 2002"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while b.held("2001").is_none() || b.held("2002").is_none() {
            assert!(tokio::time::Instant::now() < deadline, "{:?}", b.stats());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(b.stats().recordings_put, 2);
        let fresh = bucket(&store);
        assert_eq!(fresh.refresh().await.unwrap(), 2);
        assert_eq!(fresh.held("2002").map(|h| h.size), Some(6 << 20));
        disk.shutdown();
    }
}
