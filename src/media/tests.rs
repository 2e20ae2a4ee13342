//! Unit tests of the media layer against the fake source. Each test names the behaviour it pins
//! down; request counts come from the fake's log of (id, offset).

use std::sync::Arc;
use std::time::Duration;

use super::fake::{FakeRange, FakeRecording, FakeSource, Fault, Reply, expected};
use super::*;

/// The chunk size of [`cfg`].
pub(crate) const CS: usize = 16 << 10;

/// A recording key whose URI names the id.
pub(crate) fn key(id: &str) -> RecordingKey {
    RecordingKey {
        id: id.into(),
        content_uri: format!("https://media.example/{id}"),
    }
}

/// Small chunks, a small budget, short timeouts.
pub(crate) fn cfg() -> MediaConfig {
    MediaConfig {
        cache_bytes: 4 << 20,
        chunk_size: CS,
        readahead: 64 << 10,
        far_seek: 64 << 10,
        read_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
    }
}

fn setup(
    fake: FakeSource,
    recs: &[(&str, FakeRecording)],
    config: MediaConfig,
) -> (Arc<FakeSource>, Arc<Media>) {
    for (id, r) in recs {
        fake.add(id, r.clone());
    }
    let fake = Arc::new(fake);
    let media = Media::new(fake.clone(), config);
    (fake, media)
}

fn opens_of(fake: &FakeSource) -> Vec<u64> {
    fake.opens().into_iter().map(|(_, o)| o).collect()
}

/// Reads `[from, EOF)` in reads of `step` bytes; checks each read is full except the last.
pub(crate) async fn read_from(media: &Media, k: &RecordingKey, from: u64, step: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut off = from;
    loop {
        let b = media
            .read(k, off, step, Priority::Interactive)
            .await
            .expect("read");
        if b.is_empty() {
            return out;
        }
        off += b.len() as u64;
        out.extend_from_slice(&b);
        if b.len() < step as usize {
            // Short only at EOF: the next read must be empty.
            let after = media
                .read(k, off, step, Priority::Interactive)
                .await
                .expect("read at EOF");
            assert!(
                after.is_empty(),
                "short read of {} at {} before EOF",
                b.len(),
                off - b.len() as u64
            );
            return out;
        }
    }
}

/// Polls `cond` every 5 ms (of tokio time) for up to 5 s.
pub(crate) async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn sequential_read_spends_exactly_one_request() {
    let (fake, media) = setup(
        FakeSource::new(),
        &[("a", FakeRecording::new(300_000, 1))],
        cfg(),
    );
    let k = key("a");
    let known = media.open(&k, Priority::Interactive).await.unwrap();
    assert_eq!(
        known,
        Known {
            size: Some(300_000),
            content_type: Some("audio/mpeg".into())
        }
    );
    let got = read_from(&media, &k, 0, 5000).await;
    assert!(got == expected(1, 0, 300_000), "content differs");
    media.close(&k);
    assert_eq!(opens_of(&fake), vec![0]);
    assert_eq!(media.stats().opens, 1);
    wait_until("the body is dropped", || fake.live_bodies() == 0).await;
}

#[tokio::test]
async fn reread_within_budget_spends_nothing() {
    let (fake, media) = setup(
        FakeSource::new(),
        &[("a", FakeRecording::new(200_000, 2))],
        cfg(),
    );
    let k = key("a");
    media.open(&k, Priority::Interactive).await.unwrap();
    read_from(&media, &k, 0, 4096).await;
    media.close(&k);
    let hits = media.stats().cache_hits;
    // Open of a fully cached recording and a full re-read: no request at all.
    let known = media.open(&k, Priority::Interactive).await.unwrap();
    assert_eq!(known.size, Some(200_000));
    let got = read_from(&media, &k, 0, 4096).await;
    assert!(got == expected(2, 0, 200_000));
    media.close(&k);
    assert_eq!(opens_of(&fake), vec![0]);
    assert!(
        media.stats().cache_hits >= hits + 49,
        "re-reads are hits: {:?}",
        media.stats()
    );
}

#[tokio::test]
async fn reader_wakes_as_soon_as_its_bytes_arrive() {
    let config = MediaConfig {
        chunk_size: 64 << 10,
        ..cfg()
    };
    let (fake, media) = setup(
        FakeSource::new().with_piece(1024),
        &[("a", FakeRecording::new(500_000, 3))],
        config,
    );
    let k = key("a");
    fake.set_limit(Some(1024)); // the body delivers 1 KiB of a 64 KiB chunk, then stalls
    let first = tokio::time::timeout(
        Duration::from_secs(2),
        media.read(&k, 0, 1000, Priority::Interactive),
    )
    .await
    .expect("served before the chunk is complete")
    .unwrap();
    assert!(first[..] == expected(3, 0, 1000)[..]);
    // Bytes not yet in: the read waits...
    let m2 = media.clone();
    let k2 = k.clone();
    let pending =
        tokio::spawn(async move { m2.read(&k2, 1000, 3000, Priority::Interactive).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pending.is_finished());
    // ...and gets them when they come.
    fake.set_limit(None);
    let second = pending.await.unwrap().unwrap();
    assert!(second[..] == expected(3, 1000, 3000)[..]);
    assert_eq!(opens_of(&fake), vec![0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_share_one_download() {
    let fake = FakeSource::new()
        .with_open_latency(Duration::from_millis(50))
        .with_piece_delay(Duration::from_millis(1));
    let (fake, media) = setup(fake, &[("a", FakeRecording::new(150_000, 4))], cfg());
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let media = media.clone();
        tasks.push(tokio::spawn(async move {
            let k = key("a");
            media.open(&k, Priority::Interactive).await.unwrap();
            let got = read_from(&media, &k, 0, 3000 + i * 512).await;
            media.close(&k);
            got
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap() == expected(4, 0, 150_000));
    }
    assert_eq!(opens_of(&fake), vec![0]);
}

#[tokio::test]
async fn near_seek_waits_for_the_stream() {
    let (fake, media) = setup(
        FakeSource::new(),
        &[("a", FakeRecording::new(1 << 20, 5))],
        cfg(),
    );
    let k = key("a");
    fake.set_limit(Some(8192));
    media
        .read(&k, 0, 1000, Priority::Interactive)
        .await
        .unwrap();
    // 40 000 is not in yet but within far_seek of the download: wait for it, no new request.
    let m2 = media.clone();
    let k2 = k.clone();
    let ahead =
        tokio::spawn(async move { m2.read(&k2, 40_000, 2000, Priority::Interactive).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    fake.set_limit(None);
    let got = ahead.await.unwrap().unwrap();
    assert!(got[..] == expected(5, 40_000, 2000)[..]);
    assert_eq!(opens_of(&fake), vec![0]);
}

#[tokio::test]
async fn far_seek_spends_one_range_request_and_streams_never_overlap() {
    let len = 2 << 20;
    let (fake, media) = setup(
        FakeSource::new(),
        &[("a", FakeRecording::new(len, 6))],
        cfg(),
    );
    let k = key("a");
    media
        .read(&k, 0, 1000, Priority::Interactive)
        .await
        .unwrap();
    let far = 1_500_000;
    let tail = read_from(&media, &k, far, 4096).await;
    assert!(tail == expected(6, far, len - far));
    let aligned = far / CS as u64 * CS as u64;
    assert_eq!(opens_of(&fake), vec![0, aligned]);
    // Reading the rest: the first stream resumes and stops where the second one started.
    let all = read_from(&media, &k, 0, 8192).await;
    assert!(all == expected(6, 0, len));
    assert_eq!(opens_of(&fake), vec![0, aligned]);
    assert_eq!(fake.bytes_sent(), len, "no byte fetched twice");
}

#[tokio::test]
async fn backward_seek_to_evicted_bytes_spends_one_range_request() {
    let config = MediaConfig {
        cache_bytes: 4 * CS as u64,
        readahead: CS as u64,
        ..cfg()
    };
    let (fake, media) = setup(
        FakeSource::new(),
        &[("a", FakeRecording::new(256 << 10, 7))],
        config,
    );
    let k = key("a");
    assert!(read_from(&media, &k, 0, 4096).await == expected(7, 0, 256 << 10));
    assert_eq!(opens_of(&fake), vec![0]);
    let s = media.stats();
    assert!(s.evictions > 0 && s.peak_bytes <= 4 * CS as u64, "{s:?}");
    let again = media
        .read(&k, 100, 1000, Priority::Interactive)
        .await
        .unwrap();
    assert!(again[..] == expected(7, 100, 1000)[..]);
    assert_eq!(opens_of(&fake), vec![0, 0]);
}

#[tokio::test]
async fn download_pauses_readahead_ahead_of_its_reader() {
    let (fake, media) = setup(
        FakeSource::new(),
        &[("a", FakeRecording::new(8 << 20, 8))],
        cfg(),
    );
    let k = key("a");
    media.open(&k, Priority::Interactive).await.unwrap();
    media
        .read(&k, 0, 1000, Priority::Interactive)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bound = 1000 + (64 << 10) + CS as u64 + 4096;
    assert!(
        fake.bytes_sent() <= bound,
        "pulled {} bytes",
        fake.bytes_sent()
    );
    assert!(media.stats().bytes_cached <= bound);
    assert_eq!(fake.live_bodies(), 1, "paused, not closed");
    // Reading on (within far_seek of where it paused) resumes the same stream.
    media
        .read(&k, 100_000, 1000, Priority::Interactive)
        .await
        .unwrap();
    assert_eq!(opens_of(&fake), vec![0]);
}

#[tokio::test]
async fn idle_download_drops_its_connection_and_resumes_where_it_stopped() {
    let config = MediaConfig {
        idle_timeout: Duration::from_millis(150),
        ..cfg()
    };
    let len = 400_000;
    let (fake, media) = setup(
        FakeSource::new().with_piece(5000),
        &[("a", FakeRecording::new(len, 9))],
        config,
    );
    let k = key("a");
    media.open(&k, Priority::Interactive).await.unwrap();
    media
        .read(&k, 0, 1000, Priority::Interactive)
        .await
        .unwrap();
    wait_until("the idle stream is dropped", || fake.live_bodies() == 0).await;
    let stopped_at = fake.bytes_sent();
    assert!(
        stopped_at % CS as u64 != 0,
        "test wants a stop mid-chunk, got {stopped_at}"
    );
    let rest = read_from(&media, &k, 1000, 7000).await;
    assert!(rest == expected(9, 1000, len - 1000));
    assert_eq!(opens_of(&fake), vec![0, stopped_at]);
    assert_eq!(fake.bytes_sent(), len, "no byte fetched twice");
}

#[tokio::test]
async fn closing_the_last_reader_stops_a_paused_download() {
    let (fake, media) = setup(
        FakeSource::new(),
        &[("a", FakeRecording::new(1 << 20, 10))],
        cfg(),
    );
    let k = key("a");
    media.open(&k, Priority::Interactive).await.unwrap();
    media.open(&k, Priority::Interactive).await.unwrap();
    media
        .read(&k, 0, 1000, Priority::Interactive)
        .await
        .unwrap();
    media.close(&k);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.live_bodies(), 1, "one reader still has it open");
    media.close(&k);
    wait_until("the stream is dropped", || fake.live_bodies() == 0).await; // idle_timeout is 10 s
}

#[tokio::test]
async fn a_drop_resumes_within_the_read_where_the_body_stopped() {
    let (fake, media) = setup(
        FakeSource::new(),
        &[("a", FakeRecording::new(300_000, 11))],
        cfg(),
    );
    let k = key("a");
    // The read at 30 000 starts a download at its chunk (16 384) that breaks 10 000 bytes in,
    // before reaching the reader: the download resumes with one Range request from there.
    fake.push_fault(Fault::ErrorAfter(
        10_000,
        MediaError::Transient("connection reset".into()),
    ));
    let got = media
        .read(&k, 30_000, 1000, Priority::Interactive)
        .await
        .unwrap();
    assert!(got[..] == expected(11, 30_000, 1000)[..]);
    let cs = CS as u64;
    assert_eq!(opens_of(&fake), vec![cs, cs + 10_000]);
    assert!(read_from(&media, &k, cs, 8192).await == expected(11, cs, 300_000 - cs));
    assert_eq!(
        opens_of(&fake),
        vec![cs, cs + 10_000],
        "no byte fetched twice"
    );
    assert_eq!(media.stats().resumes, 1);
}

#[tokio::test(start_paused = true)]
async fn a_final_error_fails_the_read_and_cools_down_before_the_next_request() {
    let (fake, media) = setup(
        FakeSource::new(),
        &[("a", FakeRecording::new(300_000, 11))],
        cfg(),
    );
    let k = key("a");
    fake.push_fault(Fault::ErrorAfter(
        10_000,
        MediaError::Failed("refused".into()),
    ));
    let err = media
        .read(&k, 30_000, 1000, Priority::Interactive)
        .await
        .unwrap_err();
    assert_eq!(err, MediaError::Failed("refused".into()));
    let cs = CS as u64;
    assert_eq!(opens_of(&fake), vec![cs]);
    // At once again: the same error, no request.
    assert_eq!(
        media
            .read(&k, 30_000, 1000, Priority::Interactive)
            .await
            .unwrap_err(),
        err
    );
    assert_eq!(
        media.open(&k, Priority::Interactive).await,
        Ok(Known {
            size: Some(300_000),
            content_type: Some("audio/mpeg".into())
        }),
        "the size is known: open needs no request"
    );
    assert_eq!(opens_of(&fake), vec![cs]);
    // After the cool-down, one request resumes where the failed one stopped (bytes kept).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let got = media
        .read(&k, 30_000, 1000, Priority::Interactive)
        .await
        .unwrap();
    assert!(got[..] == expected(11, 30_000, 1000)[..]);
    assert_eq!(opens_of(&fake), vec![cs, cs + 10_000]);
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_within_the_budget_and_no_further() {
    let (fake, media) = setup(
        FakeSource::new(),
        &[("a", FakeRecording::new(50_000, 12))],
        cfg(),
    );
    let k = key("a");
    // Two failures, then an answer: one read, three requests.
    for _ in 0..MAX_STRIKES - 1 {
        fake.push_fault(Fault::OpenError(MediaError::Transient("503".into())));
    }
    let got = media.read(&k, 0, 100, Priority::Interactive).await.unwrap();
    assert!(got[..] == expected(12, 0, 100)[..]);
    assert_eq!(opens_of(&fake).len(), MAX_STRIKES as usize);

    // Failing for ever: the read fails after MAX_STRIKES requests, and the next ones wait for
    // the cool-down (1 s, then 2 s, ...) instead of spending.
    let (fake, media) = setup(
        FakeSource::new(),
        &[("b", FakeRecording::new(50_000, 12))],
        cfg(),
    );
    let k = key("b");
    for _ in 0..100 {
        fake.push_fault(Fault::OpenError(MediaError::Transient("503".into())));
    }
    let t0 = tokio::time::Instant::now();
    let err = media
        .read(&k, 0, 100, Priority::Interactive)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MediaError::Failed(m) if m.contains("gave up") && m.contains("503")),
        "{err:?}"
    );
    assert_eq!(opens_of(&fake).len(), MAX_STRIKES as usize);
    let mut errors = 1;
    while t0.elapsed() < Duration::from_secs(10) {
        assert!(media.read(&k, 0, 100, Priority::Interactive).await.is_err());
        errors += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ten seconds of a reader retrying every 100 ms: cool-downs of 1 + 2 + 4 s allow three more
    // episodes of MAX_STRIKES requests at most.
    let spent = opens_of(&fake).len();
    assert!(
        spent <= 4 * MAX_STRIKES as usize,
        "{errors} failed reads spent {spent} requests"
    );
    assert!(errors > 50);
    assert_eq!(
        media.stats().failures as usize,
        spent / MAX_STRIKES as usize
    );
}

#[tokio::test]
async fn body_ending_before_its_length_resumes_from_where_it_ended() {
    let (fake, media) = setup(
        FakeSource::new(),
        &[("a", FakeRecording::new(100_000, 13))],
        cfg(),
    );
    let k = key("a");
    fake.push_fault(Fault::EndAfter(10_000));
    assert!(read_from(&media, &k, 0, 50_000).await == expected(13, 0, 100_000));
    assert_eq!(opens_of(&fake), vec![0, 10_000]);
}

#[tokio::test]
async fn unknown_length_learns_the_exact_size_at_eof() {
    let rec = FakeRecording {
        send_length: false,
        ..FakeRecording::new(300_000, 14)
    };
    let (fake, media) = setup(FakeSource::new(), &[("a", rec)], cfg());
    let k = key("a");
    let known = media.open(&k, Priority::Interactive).await.unwrap();
    assert_eq!(known.size, None, "{known:?}");
    assert_eq!(known.content_type.as_deref(), Some("audio/mpeg"));
    assert!(read_from(&media, &k, 0, 7000).await == expected(14, 0, 300_000));
    assert_eq!(
        media.known("a"),
        Some(Known {
            size: Some(300_000),
            content_type: Some("audio/mpeg".into())
        })
    );
    assert_eq!(
        media
            .read(&k, 299_990, 100, Priority::Interactive)
            .await
            .unwrap()
            .len(),
        10
    );
    assert!(
        media
            .read(&k, 300_000, 100, Priority::Interactive)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        media
            .read(&k, 900_000, 100, Priority::Interactive)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(opens_of(&fake), vec![0]);
}

#[tokio::test]
async fn unknown_length_read_past_eof_is_empty() {
    let rec = FakeRecording {
        send_length: false,
        ..FakeRecording::new(300_000, 15)
    };
    let (fake, media) = setup(FakeSource::new(), &[("a", rec)], cfg());
    let k = key("a");
    assert!(
        media
            .read(&k, 305_000, 100, Priority::Interactive)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        media
            .read(&k, 900_000, 100, Priority::Interactive)
            .await
            .unwrap()
            .is_empty()
    );
    // The Range request's 206 does not tell the total (`bytes 294912-299999/*`), so its end may
    // not be the content's: one more request at 300 000 (a 416 with `bytes */300000`) says so.
    assert_eq!(opens_of(&fake), vec![294_912, 300_000]);
    assert_eq!(media.known("a").and_then(|k| k.size), Some(300_000));
}

#[tokio::test]
async fn blocked_read_and_open_time_out() {
    let config = MediaConfig {
        read_timeout: Duration::from_millis(150),
        ..cfg()
    };
    let (fake, media) = setup(
        FakeSource::new(),
        &[("a", FakeRecording::new(100_000, 16))],
        config.clone(),
    );
    fake.set_limit(Some(0));
    let t = std::time::Instant::now();
    assert_eq!(
        media.read(&key("a"), 0, 100, Priority::Interactive).await,
        Err(MediaError::TimedOut)
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    let slow = FakeSource::new().with_open_latency(Duration::from_secs(2));
    let (_fake, media) = setup(slow, &[("a", FakeRecording::new(100_000, 16))], config);
    assert_eq!(
        media.open(&key("a"), Priority::Interactive).await,
        Err(MediaError::TimedOut)
    );
}

#[tokio::test]
async fn missing_recording_is_not_available() {
    let (_fake, media) = setup(FakeSource::new(), &[], cfg());
    assert!(matches!(
        media.open(&key("nope"), Priority::Interactive).await,
        Err(MediaError::NotAvailable(_))
    ));
    assert!(matches!(
        media.read(&key("nope"), 0, 10, Priority::Interactive).await,
        Err(MediaError::NotAvailable(_))
    ));
    assert_eq!(media.known("nope"), None);
}

#[tokio::test]
async fn lru_evicts_least_recent_and_keeps_what_is_known() {
    let config = MediaConfig {
        cache_bytes: 4 * CS as u64,
        readahead: CS as u64,
        ..cfg()
    };
    let len = 3 * CS as u64;
    let recs = [
        ("a", FakeRecording::new(len, 17)),
        ("b", FakeRecording::new(len, 18)),
    ];
    let (fake, media) = setup(FakeSource::new(), &recs, config);
    read_from(&media, &key("a"), 0, 4096).await;
    read_from(&media, &key("b"), 0, 4096).await;
    let s = media.stats();
    assert!(
        s.evictions >= 2 && s.bytes_cached <= 4 * CS as u64 && s.peak_bytes <= 4 * CS as u64,
        "{s:?}"
    );
    // b is the most recent: free; a lost its oldest chunks: one more request.
    assert!(read_from(&media, &key("b"), 0, 4096).await == expected(18, 0, len));
    assert_eq!(fake.opens().len(), 2);
    assert!(read_from(&media, &key("a"), 0, 4096).await == expected(17, 0, len));
    assert_eq!(fake.opens().len(), 3);
    assert_eq!(media.known("a").and_then(|k| k.size), Some(len));
}

/// A deterministic pseudo-random sequence for the concurrency tests.
fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_readers_on_one_recording_with_seeks() {
    let len = 1 << 20;
    // The budget covers the working set (32 readers x (20 KB read + 32 KB read-ahead) = 1.7 MB).
    // With 512 KB, a reader starved of CPU under a loaded test run could see its bytes evicted
    // three times and get a (clean) error, which this test does not expect.
    let config = MediaConfig {
        cache_bytes: 2 << 20,
        readahead: 32 << 10,
        ..cfg()
    };
    let (fake, media) = setup(
        FakeSource::new(),
        &[("a", FakeRecording::new(len, 19))],
        config,
    );
    let mut tasks = Vec::new();
    for r in 0..32u64 {
        let media = media.clone();
        tasks.push(tokio::spawn(async move {
            let k = key("a");
            let mut seed = r + 1;
            media.open(&k, Priority::Interactive).await.unwrap();
            let mut off = lcg(&mut seed) % len;
            for _ in 0..40 {
                if lcg(&mut seed) % 8 == 0 {
                    off = lcg(&mut seed) % (len + 10_000); // a seek, sometimes past EOF
                }
                let size = 1 + (lcg(&mut seed) % 20_000) as u32;
                let got = media
                    .read(&k, off, size, Priority::Interactive)
                    .await
                    .unwrap();
                let want = expected(
                    19,
                    off.min(len),
                    (off + size as u64).min(len) - off.min(len),
                );
                assert!(
                    got[..] == want[..],
                    "reader {r}: wrong bytes at {off}+{size}"
                );
                off += size as u64;
            }
            media.close(&k);
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("no deadlock")
            .unwrap();
    }
    assert!(!fake.opens().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_recordings_with_a_small_budget() {
    let len = 128 << 10;
    let cs = 4096;
    let budget = 1 << 20; // a quarter of what is read
    let config = MediaConfig {
        cache_bytes: budget,
        chunk_size: cs,
        readahead: 16 << 10,
        far_seek: 32 << 10,
        ..cfg()
    };
    let recs: Vec<(String, FakeRecording)> = (0..32)
        .map(|i| (format!("r{i}"), FakeRecording::new(len + i * 1000, 100 + i)))
        .collect();
    let recs_ref: Vec<(&str, FakeRecording)> =
        recs.iter().map(|(i, r)| (i.as_str(), r.clone())).collect();
    let (fake, media) = setup(FakeSource::new().with_piece(3000), &recs_ref, config);
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let media = media.clone();
        tasks.push(tokio::spawn(async move {
            let k = key(&format!("r{i}"));
            let n = len + i * 1000;
            media.open(&k, Priority::Interactive).await.unwrap();
            let got = read_from(&media, &k, 0, 4096 + i as u32 * 100).await;
            assert!(got == expected(100 + i, 0, n), "recording {i}: wrong bytes");
            // A seek back and a re-read of a piece.
            let off = n / 3;
            let got = media
                .read(&k, off, 10_000, Priority::Interactive)
                .await
                .unwrap();
            assert!(
                got[..] == expected(100 + i, off, 10_000)[..],
                "recording {i}: wrong bytes after seek"
            );
            media.close(&k);
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("no deadlock")
            .unwrap();
    }
    let s = media.stats();
    assert!(s.evictions > 0, "{s:?}");
    assert!(
        s.peak_bytes <= budget,
        "peak {} over budget {budget}",
        s.peak_bytes
    );
    // Every recording was streamed once (32) and the seek back adds at most one request each
    // (32). Readers starved of CPU (32 tasks on 2 threads) can still fall behind their
    // read-ahead and lose a chunk now and then: measured 71-73 requests. Before eviction
    // preferred chunks already read, chunks streamed ahead were evicted first: 91-93.
    assert!(
        fake.opens().len() <= 80,
        "{} requests: {:?} {s:?}",
        fake.opens().len(),
        fake.opens()
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_nobody_waits_for_any_more_is_withdrawn() {
    // Requests take longer than the read timeout (a pacer holding them, a host that does not
    // answer): the read fails at its timeout, and the request behind it goes away with it
    // instead of being spent later.
    let slow = FakeSource::new().with_open_latency(Duration::from_secs(60));
    let config = MediaConfig {
        read_timeout: Duration::from_secs(2),
        ..cfg()
    };
    let (fake, media) = setup(slow, &[("a", FakeRecording::new(100_000, 30))], config);
    let k = key("a");
    let t0 = tokio::time::Instant::now();
    assert_eq!(
        media.read(&k, 0, 100, Priority::Interactive).await,
        Err(MediaError::TimedOut)
    );
    assert_eq!(t0.elapsed(), Duration::from_secs(2));
    assert_eq!(fake.opens().len(), 1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(fake.live_bodies(), 0);
    // The download is gone: a new read starts a new one (no stale download to wait on).
    assert_eq!(
        media.read(&k, 0, 100, Priority::Interactive).await,
        Err(MediaError::TimedOut)
    );
    assert_eq!(fake.opens().len(), 2);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        fake.bytes_sent(),
        0,
        "no body was ever read for a reader that had gone"
    );
}

#[tokio::test]
async fn offline_serves_what_is_kept_and_fails_the_rest_without_a_request() {
    let (fake, media) = setup(
        FakeSource::new(),
        &[
            ("a", FakeRecording::new(100_000, 31)),
            ("b", FakeRecording::new(100_000, 32)),
        ],
        cfg(),
    );
    let (a, b) = (key("a"), key("b"));
    assert!(read_from(&media, &a, 0, 8192).await == expected(31, 0, 100_000));
    let spent = fake.opens().len();
    media.set_offline(true);
    // Kept: read as ever. Not kept: an error at once, no request.
    assert!(
        media
            .read(&a, 5000, 1000, Priority::Interactive)
            .await
            .unwrap()[..]
            == expected(31, 5000, 1000)[..]
    );
    assert!(matches!(
        media.read(&b, 0, 1000, Priority::Interactive).await,
        Err(MediaError::Transient(_))
    ));
    assert!(matches!(
        media.open(&b, Priority::Interactive).await,
        Err(MediaError::Transient(_))
    ));
    assert_eq!(fake.opens().len(), spent, "nothing sent while offline");
    media.set_offline(false);
    assert!(
        media
            .read(&b, 0, 1000, Priority::Interactive)
            .await
            .unwrap()[..]
            == expected(32, 0, 1000)[..]
    );
}

#[tokio::test]
async fn an_open_is_answered_before_its_download_pulls_the_body() {
    // One runtime thread, a body whose bytes are all ready at once: the open's task must run
    // as soon as the headers are in, not after the download has pulled the body up to its
    // read-ahead (the kernel's OPEN waits on it, and with it the first byte).
    let (_fake, media) = setup(
        FakeSource::new(),
        &[("a", FakeRecording::new(1_000_000, 5))],
        cfg(),
    );
    let k = key("a");
    let known = media.open(&k, Priority::Interactive).await.unwrap();
    assert_eq!(known.size, Some(1_000_000));
    let held = media.stats().bytes_cached;
    assert!(
        held < 16 << 10,
        "{held} bytes were pulled before the open was answered"
    );
    let b = media
        .read(&k, 0, 4096, Priority::Interactive)
        .await
        .unwrap();
    assert!(b[..] == expected(5, 0, 4096)[..]);
    media.close(&k);
}

/// `len` bytes of a WAV file whose RIFF size field is `riff` (the real length less 8 when the
/// writer filled it in), then samples.
fn wav(len: usize, riff: u32) -> Bytes {
    let mut b = vec![0u8; len];
    b[0..4].copy_from_slice(b"RIFF");
    b[4..8].copy_from_slice(&riff.to_le_bytes());
    b[8..12].copy_from_slice(b"WAVE");
    for (i, x) in b.iter_mut().enumerate().skip(12) {
        *x = (i % 251) as u8;
    }
    Bytes::from(b)
}

/// A media host that answers every request with the whole body, without a length, delimited by
/// its connection, which drops at byte `at` every time (a proxy that cuts bodies at a fixed size).
fn cut_every_time_at(at: u64) -> FakeSource {
    FakeSource::new().with_replies(Arc::new(move |_, _, _| Reply::Body {
        length: false,
        range: FakeRange::Ignore,
        bare_416: false,
        drop_at: Some(at),
        close_delimited: true,
    }))
}

/// `content`, served as `ct` by a host that cuts every body at byte 60000 (whose format says
/// the content goes on): the bytes before the cut are the recording's, a read past it is an
/// error, no length is learned, and the requests stay bounded.
async fn cut_every_time_is_an_error_past_the_cut(content: Bytes, ct: &str) {
    let (fake, media) = setup(cut_every_time_at(60_000), &[], cfg());
    fake.add_bytes("a", content.clone(), ct, false);
    let k = key("a");
    let head = media
        .read(&k, 0, 4096, Priority::Interactive)
        .await
        .unwrap();
    assert!(head == content[..4096], "{ct}: the bytes before the cut");
    let past = media.read(&k, 59_000, 4096, Priority::Interactive).await;
    assert!(
        past.is_err(),
        "{ct}: every answer closed at byte 60000 of {}: {:?}",
        content.len(),
        past.map(|b| b.len())
    );
    assert_eq!(media.known("a").and_then(|k| k.size), None, "{ct}");
    let opens = opens_of(&fake);
    eprintln!(
        "[media] {ct} cut at a fixed byte: {} requests {opens:?}",
        opens.len()
    );
    assert!(
        opens.len() <= 6,
        "{ct}: a bounded number of requests: {opens:?}"
    );
}

#[tokio::test]
async fn a_wav_cut_at_the_same_byte_by_every_answer_is_an_error_past_the_cut_not_its_end() {
    let len = 100_044;
    cut_every_time_is_an_error_past_the_cut(wav(len, len as u32 - 8), "audio/wav").await;
}

#[tokio::test]
async fn a_wav_whose_writer_left_the_size_open_ends_where_two_answers_end() {
    // A streaming writer's header (u32::MAX) says nothing: two answers closing at the same byte
    // are the end, as for any content.
    let content = wav(60_000, u32::MAX);
    let (fake, media) = setup(cut_every_time_at(60_000), &[], cfg());
    fake.add_bytes("a", content.clone(), "audio/wav", false);
    let k = key("a");
    assert!(read_from(&media, &k, 0, 4096).await == content[..]);
    assert_eq!(media.known("a").and_then(|k| k.size), Some(60_000));
}

/// `frames` MPEG-1 Layer III frames of 144 bytes (32 kbps, 32 kHz, the emulator's), each frame's
/// body its index, so that the bytes hold no frame sync but the headers.
fn mp3(frames: usize) -> Bytes {
    let mut b = Vec::with_capacity(frames * 144);
    for i in 0..frames {
        b.extend_from_slice(&[0xFF, 0xFB, 0x18, 0xC4]);
        b.extend(std::iter::repeat_n((i % 250) as u8, 140));
    }
    Bytes::from(b)
}

#[tokio::test]
async fn an_mp3_cut_inside_a_frame_by_every_answer_is_an_error_past_the_cut_not_its_end() {
    // 60000 is inside frame 416 (of 144 bytes).
    cut_every_time_is_an_error_past_the_cut(mp3(700), "audio/mpeg").await;
}

#[tokio::test]
async fn an_mp3_whose_body_ends_after_a_whole_frame_ends_where_two_answers_end() {
    // The cut at a frame boundary is what the frames cannot tell from a whole file: it is the
    // end, confirmed by a second answer, as for any content without a length.
    for (len, cut) in [(700 * 144, 700 * 144), (700 * 144, 417 * 144)] {
        let content = mp3(len / 144);
        let (fake, media) = setup(cut_every_time_at(cut as u64), &[], cfg());
        fake.add_bytes("a", content.clone(), "audio/mpeg", false);
        let k = key("a");
        let got = read_from(&media, &k, 0, 4096).await;
        assert!(got == content[..cut], "{cut}: {} bytes", got.len());
        assert_eq!(media.known("a").and_then(|k| k.size), Some(cut as u64));
        let opens = opens_of(&fake);
        assert_eq!(opens.len(), 2, "the answer and its confirmation: {opens:?}");
    }
}

#[tokio::test]
async fn a_wav_named_by_its_type_is_never_read_as_frames() {
    // A WAV whose writer left the size open holds samples that may chain like MPEG frames (here
    // they are MPEG frames): its content type says WAV, so its end is confirmed as any other.
    let mut content = wav(44, u32::MAX).to_vec();
    content.extend_from_slice(&mp3(700));
    let cut = 44 + 60_000;
    let (fake, media) = setup(cut_every_time_at(cut as u64), &[], cfg());
    fake.add_bytes("a", Bytes::from(content.clone()), "audio/wav", false);
    let k = key("a");
    let got = read_from(&media, &k, 0, 4096).await;
    assert!(got == content[..cut], "{} bytes", got.len());
}

#[tokio::test]
async fn a_first_read_past_a_fixed_cut_is_an_error_not_the_end() {
    // The reader's first read lies past the cut: every answer (Range ignored, from byte 0)
    // ends before the offset asked for, so the download itself holds none of the bytes before
    // the end. The format's evidence comes from the bytes the body skipped.
    // On a chunk boundary (and inside an MP3 frame: 65536 = 455 * 144 + 16), so that a first
    // read at the cut starts a download whose buffer holds nothing before it.
    const CUT: u64 = 4 * CS as u64;
    let wav_len = 100_044;
    for (content, ct) in [
        (wav(wav_len, wav_len as u32 - 8), "audio/wav"),
        (mp3(700), "audio/mpeg"),
    ] {
        for first in [80_000, CUT] {
            let (fake, media) = setup(cut_every_time_at(CUT), &[], cfg());
            fake.add_bytes("a", content.clone(), ct, false);
            let k = key("a");
            // At the cut itself, the body ends exactly where it was asked to start.
            let past = media.read(&k, first, 4096, Priority::Interactive).await;
            assert!(
                past.is_err(),
                "{ct}, first read at {first}: every answer closed at byte {CUT}, the format says it goes on: {:?}",
                past.map(|b| b.len())
            );
            assert_eq!(media.known("a").and_then(|k| k.size), None, "{ct}");
            // The request budget is spent: the head is an error too (during the cool-down), or
            // the recording's bytes, never a shorter file.
            if let Ok(head) = media.read(&k, 0, 4096, Priority::Interactive).await {
                assert!(head == content[..4096], "{ct}: the bytes before the cut");
            }
            assert!(opens_of(&fake).len() <= 6, "{ct}: {:?}", opens_of(&fake));
        }
    }
}

#[tokio::test]
async fn a_wav_that_comes_in_tiny_pieces_and_is_cut_every_time_is_an_error_past_the_cut() {
    // Bodies in 5-byte pieces (the RIFF header arrives over three of them) and a cache of two
    // chunks, so that chunk 0 is evicted long before the cut: the header's length is read from
    // the first bytes once they are all in, and kept.
    let len = 100_044;
    let content = wav(len, len as u32 - 8);
    let fake = cut_every_time_at(90_000).with_piece(5);
    let config = MediaConfig {
        cache_bytes: 2 * CS as u64,
        readahead: CS as u64,
        ..cfg()
    };
    let (fake, media) = setup(fake, &[], config);
    fake.add_bytes("a", content.clone(), "audio/wav", false);
    let k = key("a");
    let mut off = 0u64;
    let mut failed = false;
    while off < len as u64 {
        match media.read(&k, off, 4096, Priority::Interactive).await {
            Ok(b) if b.is_empty() => break,
            Ok(b) => {
                assert!(b[..] == content[off as usize..off as usize + b.len()]);
                off += b.len() as u64;
            }
            Err(e) => {
                eprintln!("[media] riff in pieces: failed at {off}: {e}");
                failed = true;
                break;
            }
        }
    }
    assert!(
        failed,
        "read {off} bytes of {len} and then an end: the cut passed for the end"
    );
    assert!(off <= 90_000);
    assert_eq!(media.known("a").and_then(|k| k.size), None);
}
