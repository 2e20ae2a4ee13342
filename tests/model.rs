//! Model-based tests of the media path: random recordings, a random media-host answer for every
//! request, random read patterns, every byte and every size checked against the truth.
//!
//! Each case is generated from one seed: a few recordings (sizes from 0 bytes to a few chunks,
//! edges included), a media-layer configuration (chunk size, cache budget, read-ahead), the
//! answer of the media host to each request (length stated or not, chunked or delimited by the
//! connection, Range honoured, ignored or cut short, a bare 416 past the end, a drop at a byte, a
//! 5xx, a 404 before the first 200), the content itself (random bytes, or with its format's
//! evidence of its length: MPEG audio frames, a RIFF header; then also a host that cuts every
//! body at one byte inside the content, each answer looking like a shorter file), and
//! one to three readers running at once (sequential reads of kernel-like sizes, seeks forwards
//! and backwards and past the end, `stat` between reads, close and re-open, an open while another
//! reader's download is running). The oracle:
//! - a read returns exactly the recording's bytes at its offset (short only at the end), or an
//!   error; it never returns other bytes;
//! - a known size is the exact size; a content type is the one served;
//! - when the host's failures stay within the request budget, no read fails at all;
//! - every request past the first of a download is explained by something the host did (a drop,
//!   a failure, a range cut short);
//! - a recording whose host never answers fails each read fast, after at most `MAX_STRIKES`
//!   requests per failure; one whose host cuts every body at a byte may fail reads, but never
//!   ends at the cut.
//!
//! Time is tokio's paused clock, so a case with slow bodies and back-offs runs in microseconds,
//! and single-threaded, so a seed replays exactly: `RINGFS_MODEL_SEED=<seed> cargo test --test
//! model -- --nocapture` runs one case and prints what it did. `RINGFS_MODEL_CASES` sets how many
//! cases a run makes (default 2000).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::Rng;
use ringfs::media::fake::{FakeRange, FakeRecording, FakeSource, Reply, expected};
use ringfs::media::{MAX_STRIKES, Media, MediaConfig, MediaError, Priority, RecordingKey};

fn mix(a: u64, b: u64) -> u64 {
    Rng(a ^ b.rotate_left(29) ^ 0x5851_F42D_4C95_7F2D).next()
}

/// How a recording's host behaves in a case.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Host {
    /// Any answer, but at most `MAX_STRIKES - 1` requests that can bring no new byte: every
    /// read must succeed.
    Recoverable,
    /// As `Recoverable`, after a first 404 (a recording still being processed): reads may fail
    /// until the reader has waited out the cool-down.
    NotFoundFirst,
    /// Never answers with a body (always 5xx): every read fails, requests stay bounded.
    Broken,
    /// A proxy that cuts every body at this content byte, and the 200s delimited by their
    /// connection, so each looks like a file that ends there. Only for recordings whose format
    /// says the content goes on (`framed`): reads past the cut must fail, never end there.
    CutEveryTime(u64),
}

#[derive(Clone, Debug)]
struct Rec {
    id: String,
    len: u64,
    seed: u64,
    content_type: &'static str,
    host: Host,
    /// The bytes carry their format's evidence of the length: MPEG audio frames for
    /// `audio/mpeg`, a RIFF header stating the size for the WAV types.
    framed: bool,
}

/// One MPEG-1 Layer III frame header (32 kbps, 32 kHz: 144-byte frames), as the emulator's.
const MP3_HEADER: [u8; 4] = [0xFF, 0xFB, 0x18, 0xC4];
const MP3_FRAME: u64 = 144;

/// The recording's bytes: the fake's pseudo-random content, with the format written over it
/// when `framed` (frame headers every 144 bytes; a RIFF header). The frame bodies stay random,
/// so they hold stray frame syncs, as real audio does.
fn content(rec: &Rec) -> Vec<u8> {
    let mut b = expected(rec.seed, 0, rec.len);
    if rec.framed {
        if rec.content_type == "audio/mpeg" {
            for f in b.chunks_mut(MP3_FRAME as usize) {
                f[..4].copy_from_slice(&MP3_HEADER);
            }
        } else {
            b[0..4].copy_from_slice(b"RIFF");
            b[4..8].copy_from_slice(&(rec.len as u32 - 8).to_le_bytes());
            b[8..12].copy_from_slice(b"WAVE");
        }
    }
    b
}

/// What the host was made to do, for the accounting of requests.
#[derive(Default, Debug)]
struct Ledger {
    /// Every request: (recording, offset, answer).
    log: Vec<(String, u64, Reply)>,
    requests: HashMap<String, u64>,
    /// Requests answered in a way that calls for another request: a drop, a 5xx, a 404, a range
    /// that ends before the content does.
    explained: HashMap<String, u64>,
}

struct Case {
    recs: Vec<Rec>,
    config: MediaConfig,
    /// (reader, recording index, ops)
    readers: Vec<(usize, Vec<Op>)>,
    ledger: Arc<Mutex<Ledger>>,
    fake: Arc<FakeSource>,
}

#[derive(Clone, Debug)]
enum Op {
    Read { at: Pos, size: u32 },
    Stat,
    Reopen,
    Sleep(u64),
}

/// Where a read goes: on from the last one, or a seek.
#[derive(Clone, Copy, Debug)]
enum Pos {
    Next,
    Abs(u64),
}

fn build(seed: u64) -> Case {
    let mut r = Rng(seed);
    let cs = r.pick(&[512usize, 4096, 16384, 65536]);
    let nrecs = 1 + r.below(3) as usize;
    let mut recs = Vec::new();
    for i in 0..nrecs {
        let len = match r.below(8) {
            0 => r.pick(&[0, 1, 2]),
            1 => cs as u64 * (1 + r.below(4)),
            2 => cs as u64 * (1 + r.below(4)) + r.pick(&[1, cs as u64 - 1]),
            _ => r.below(160_000),
        };
        let host = match r.below(10) {
            0 => Host::Broken,
            1 => Host::NotFoundFirst,
            _ => Host::Recoverable,
        };
        let content_type = r.pick(&["audio/mpeg", "audio/wav", "audio/x-wav"]);
        let framed = r.chance(30);
        let (len, host) = if !framed {
            (len, host)
        } else if content_type == "audio/mpeg" {
            let frames = 1 + len / MP3_FRAME;
            let len = frames * MP3_FRAME;
            // A cut inside a frame (its header included) that follows at least four whole
            // ones (fewer give the frames no chain to tell it by).
            if frames > 5 && r.chance(35) {
                let cut = (4 + r.below(frames - 4)) * MP3_FRAME + 1 + r.below(MP3_FRAME - 1);
                (len, Host::CutEveryTime(cut))
            } else {
                (len, host)
            }
        } else {
            let len = len.max(44);
            if r.chance(35) {
                (len, Host::CutEveryTime(12 + r.below(len - 12)))
            } else {
                (len, host)
            }
        };
        recs.push(Rec {
            id: format!("r{i}"),
            len,
            seed: r.next(),
            content_type,
            host,
            framed,
        });
    }
    let readers_n = 1 + r.below(3) as usize;
    let max_read = r.pick(&[4096u32, 65536, 131072]);
    let readahead = r.pick(&[cs as u64, 4 * cs as u64, 256 << 10]);
    let piece = r.pick(&[700u64, 4096, 65536]);
    // A budget that holds every reader's window and a piece of body in flight, so that eviction
    // never takes bytes before a reader gets to them (that error is the cache's, tested on its
    // own with budgets smaller than the readers need).
    // A read up to `far_seek` ahead of a stream waits for it, and what streams past meanwhile
    // must fit as well.
    let far_seek = r.pick(&[cs as u64, 64 << 10, 1 << 20]);
    let window = readahead + 3 * cs as u64 + max_read as u64 + piece + far_seek;
    let cache_bytes = (readers_n as u64 * window * 2).max(r.pick(&[0, 1 << 20, 8 << 20]));
    let config = MediaConfig {
        cache_bytes,
        chunk_size: cs,
        readahead,
        far_seek,
        read_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(r.pick(&[1, 30])),
    };
    let mut readers = Vec::new();
    for _ in 0..readers_n {
        let rec = r.below(nrecs as u64) as usize;
        let len = recs[rec].len;
        let mut ops = Vec::new();
        let style = r.below(3);
        for _ in 0..(4 + r.below(40)) {
            let size = match style {
                0 => max_read,
                1 => r.pick(&[4096.min(max_read), max_read]),
                _ => 1 + r.below(max_read as u64) as u32,
            };
            let op = match r.below(20) {
                0 => Op::Stat,
                1 => Op::Reopen,
                2 => Op::Sleep(r.pick(&[10, 500, 1500, 40_000])),
                3 | 4 => Op::Read {
                    at: Pos::Abs(r.below(len + 2 * cs as u64 + 1)),
                    size,
                },
                5 => Op::Read {
                    at: Pos::Abs(len.saturating_sub(r.below(cs as u64 + 2))),
                    size,
                },
                _ => Op::Read {
                    at: Pos::Next,
                    size,
                },
            };
            ops.push(op);
        }
        readers.push((rec, ops));
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let fake = FakeSource::new().with_piece(piece as usize);
    // Slow bodies, but not so slow that a read would need more than its timeout.
    let fake = if piece >= 4096 && r.chance(30) {
        fake.with_piece_delay(Duration::from_millis(r.pick(&[1, 20])))
    } else {
        fake
    };
    let fake = if r.chance(20) {
        fake.with_open_latency(Duration::from_millis(r.pick(&[5, 200])))
    } else {
        fake
    };
    let host_of: HashMap<String, Rec> = recs.iter().map(|x| (x.id.clone(), x.clone())).collect();
    let l = ledger.clone();
    // Per recording, how many answers so far could have brought no new byte (the budget).
    let strikes: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let quiet_drops: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let fake = fake.with_replies(Arc::new(move |id: &str, offset: u64, n: usize| {
        let rec = &host_of[id];
        let mut r = Rng(mix(seed, mix(n as u64, rec.seed)));
        let mut l = l.lock().unwrap();
        *l.requests.entry(id.to_string()).or_default() += 1;
        let mut explain = || *l.explained.entry(id.to_string()).or_default() += 1;
        if rec.host == Host::Broken {
            explain();
            return Reply::Unavailable;
        }
        if rec.host == Host::NotFoundFirst && n == 0 {
            explain();
            return Reply::NotFound;
        }
        if let Host::CutEveryTime(at) = rec.host {
            explain();
            let reply = Reply::Body {
                length: false,
                range: r.pick(&[FakeRange::Ignore, FakeRange::Ignore, FakeRange::Honour]),
                bare_416: r.chance(50),
                drop_at: Some(at),
                close_delimited: true,
            };
            if std::env::var_os("RINGFS_MODEL_SEED").is_some() {
                println!("request {n} for {id} at {offset}: {reply:?}");
            }
            l.log.push((id.to_string(), offset, reply.clone()));
            return reply;
        }
        let mut strikes = strikes.lock().unwrap();
        let used = strikes.entry(id.to_string()).or_default();
        let may_fail = *used + 1 < MAX_STRIKES;
        let range = match r.below(10) {
            0..=4 => FakeRange::Honour,
            5..=7 => FakeRange::Ignore,
            _ => FakeRange::Capped(r.pick(&[1, 1000, 50_000])),
        };
        if may_fail && r.chance(8) {
            *used += 1;
            explain();
            return Reply::Unavailable;
        }
        let length = r.chance(50);
        let close_delimited = !length && r.chance(40);
        let mut drop_at = None;
        // Where the connection delimits the body a drop looks like the end; a second answer
        // confirms an end, so such a drop may happen once per recording (a host that drops
        // twice at the same byte without telling a length cannot be told from a short file).
        let drop_ok = !close_delimited || !quiet_drops.lock().unwrap().contains(id);
        if may_fail && drop_ok && rec.len > 1 && r.chance(15) {
            if close_delimited {
                quiet_drops.lock().unwrap().insert(id.to_string());
            }
            // A drop anywhere in the content: past the offset it brings new bytes first; at or
            // before it (or before the offset of a response that ignored Range) it may not.
            *used += 1;
            drop_at = Some(1 + r.below(rec.len - 1));
        }
        if drop_at.is_some() || close_delimited {
            explain();
        } else if let FakeRange::Capped(cap) = range
            && offset > 0
            && offset < rec.len
            && (offset + cap < rec.len || !length)
        {
            // The response ends before the content, or without saying that the content ends.
            explain();
        } else if range == FakeRange::Honour && offset > 0 && offset < rec.len && !length {
            // A 206 whose total is untold: its end may not be the content's.
            explain();
        }
        let reply = Reply::Body {
            length,
            range,
            bare_416: r.chance(50),
            drop_at,
            close_delimited,
        };
        if std::env::var_os("RINGFS_MODEL_SEED").is_some() {
            println!("request {n} for {id} at {offset}: {reply:?}");
        }
        l.log.push((id.to_string(), offset, reply.clone()));
        reply
    }));
    for rec in &recs {
        if rec.framed {
            fake.add_bytes(&rec.id, content(rec).into(), rec.content_type, true);
        } else {
            fake.add(
                &rec.id,
                FakeRecording {
                    content_type: Some(rec.content_type.to_string()),
                    ..FakeRecording::new(rec.len, rec.seed)
                },
            );
        }
    }
    Case {
        recs,
        config,
        readers,
        ledger,
        fake: Arc::new(fake),
    }
}

fn key(id: &str) -> RecordingKey {
    RecordingKey {
        id: id.into(),
        content_uri: format!("https://media.example/{id}"),
    }
}

#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

/// Runs one case; `Err` says what went wrong.
fn run(case: &Case, counts: &Counts, verbose: bool) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let media = Media::new(case.fake.clone(), case.config.clone());
        let mut tasks = Vec::new();
        let truths: Vec<Arc<Vec<u8>>> = case.recs.iter().map(|r| Arc::new(content(r))).collect();
        for (reader, (rec, ops)) in case.readers.iter().enumerate() {
            let truth = truths[*rec].clone();
            let rec = case.recs[*rec].clone();
            let ops = ops.clone();
            let media = media.clone();
            tasks.push(tokio::spawn(async move {
                let k = key(&rec.id);
                let mut log = Vec::new();
                let mut open = media.open(&k, Priority::Interactive).await.is_ok();
                log.push(format!("reader {reader} open {}: {open}", rec.id));
                let mut pos = 0u64;
                let (mut reads, mut bytes, mut errors) = (0u64, 0u64, 0u64);
                for op in ops {
                    match op {
                        Op::Stat => {
                            if let Some(k) = media.known(&rec.id) {
                                if k.size.is_some_and(|s| s != rec.len) {
                                    return Err(format!("reader {reader}: size {:?}, truth {}", k.size, rec.len));
                                }
                                if k.content_type.as_deref().is_some_and(|c| c != rec.content_type) {
                                    return Err(format!("reader {reader}: content type {:?}", k.content_type));
                                }
                            }
                        }
                        Op::Reopen => {
                            if open {
                                media.close(&k);
                            }
                            open = media.open(&k, Priority::Interactive).await.is_ok();
                            pos = 0;
                        }
                        Op::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                        Op::Read { at, size } => {
                            if let Pos::Abs(a) = at {
                                pos = a;
                            }
                            reads += 1;
                            let t = tokio::time::Instant::now();
                            match media.read(&k, pos, size, Priority::Interactive).await {
                                Ok(got) => {
                                    let from = pos.min(rec.len);
                                    let to = (pos + size as u64).min(rec.len);
                                    if got[..] != truth[from as usize..to as usize] {
                                        return Err(format!(
                                            "reader {reader}: read {}@{pos}+{size} returned {} bytes, wrong (truth {} bytes, len {})",
                                            rec.id,
                                            got.len(),
                                            to - from,
                                            rec.len
                                        ));
                                    }
                                    bytes += got.len() as u64;
                                    pos += got.len() as u64;
                                    log.push(format!("reader {reader} read {}@{pos}+{size}: {} bytes", rec.id, got.len()));
                                }
                                Err(e) => {
                                    errors += 1;
                                    log.push(format!("reader {reader} read {}@{pos}+{size}: {e}", rec.id));
                                    let waited = t.elapsed();
                                    if waited > Duration::from_secs(6) {
                                        return Err(format!("reader {reader}: a read waited {waited:?}"));
                                    }
                                    match rec.host {
                                        // Within the budget, never by waiting out the timeout.
                                        Host::Broken if !matches!(e, MediaError::TimedOut) => {}
                                        // The read that met the 404, and those during the
                                        // cool-down that follows, get the 404.
                                        Host::NotFoundFirst if matches!(e, MediaError::NotAvailable(_)) => {}
                                        // The bytes past the cut never come; those before it
                                        // may be lost with the budget (a cool-down).
                                        Host::CutEveryTime(_) if !matches!(e, MediaError::TimedOut) => {}
                                        _ => return Err(format!("reader {reader}: read {}@{pos}+{size} failed: {e}", rec.id)),
                                    }
                                    if rec.host == Host::NotFoundFirst {
                                        tokio::time::sleep(Duration::from_millis(1100)).await;
                                    }
                                }
                            }
                        }
                    }
                }
                if open {
                    media.close(&k);
                }
                Ok((log, reads, bytes, errors))
            }));
        }
        let mut logs = Vec::new();
        for t in tasks {
            let (log, reads, bytes, errors) = t.await.map_err(|e| format!("reader panicked: {e}"))??;
            counts.reads.fetch_add(reads, Ordering::Relaxed);
            counts.bytes.fetch_add(bytes, Ordering::Relaxed);
            counts.errors.fetch_add(errors, Ordering::Relaxed);
            logs.extend(log);
        }
        // Let downloads that run on finish or stop, then account for every request.
        tokio::time::sleep(Duration::from_secs(120)).await;
        let stats = media.stats();
        let ledger = case.ledger.lock().unwrap();
        if verbose {
            for l in &logs {
                println!("{l}");
            }
            println!("{stats:?}\n{ledger:?}");
        }
        let mut broken_requests = 0;
        let mut broken = 0;
        for rec in &case.recs {
            let requests = ledger.requests.get(&rec.id).copied().unwrap_or(0);
            if let Some(k) = media.known(&rec.id)
                && k.size.is_some_and(|s| s != rec.len)
            {
                return Err(format!("{}: size {:?} after the case, truth {}", rec.id, k.size, rec.len));
            }
            if rec.host == Host::Broken {
                broken += 1;
                broken_requests += requests;
            }
        }
        // A host that never answers: each episode is MAX_STRIKES requests and ends in a failure
        // (then a cool-down); one episode per recording may have been cut short by the end.
        let bound = MAX_STRIKES as u64 * (stats.failures + broken);
        if broken_requests > bound {
            return Err(format!("broken hosts got {broken_requests} requests for {} failures", stats.failures));
        }
        // Requests past the first of each download: each one explained by the host.
        let explained: u64 = ledger.explained.values().sum();
        if stats.resumes > explained {
            return Err(format!("{} resumed requests, but the host explains only {explained}", stats.resumes));
        }
        Ok(())
    })
}

fn describe(case: &Case) -> String {
    let recs: Vec<String> = case
        .recs
        .iter()
        .map(|r| format!("{}: {} bytes, {:?}", r.id, r.len, r.host))
        .collect();
    format!(
        "recordings [{}], chunk {}, cache {}, readers {}",
        recs.join("; "),
        case.config.chunk_size,
        case.config.cache_bytes,
        case.readers.len()
    )
}

#[test]
fn media_path_matches_the_model() {
    let counts = Counts::default();
    if let Ok(seed) = std::env::var("RINGFS_MODEL_SEED") {
        let seed: u64 = seed.parse().expect("RINGFS_MODEL_SEED is a number");
        let case = build(seed);
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_test_writer()
            .try_init();
        println!("case {seed}: {}", describe(&case));
        if let Err(e) = run(&case, &counts, true) {
            panic!("model case {seed} failed: {e}");
        }
        return;
    }
    let cases: u64 = std::env::var("RINGFS_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let base = std::env::var("RINGFS_MODEL_BASE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED_0000u64);
    let t = std::time::Instant::now();
    let mut requests = 0;
    for i in 0..cases {
        let seed = base + i;
        let case = build(seed);
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&case, &counts, false)));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!(
                "model case {seed} failed: {e}\n  {}\n  replay: RINGFS_MODEL_SEED={seed} cargo test --test model -- --nocapture",
                describe(&case)
            ),
            Err(_) => panic!(
                "model case {seed} panicked\n  {}\n  replay: RINGFS_MODEL_SEED={seed} cargo test --test model -- --nocapture",
                describe(&case)
            ),
        }
        requests += case.fake.opens().len();
    }
    println!(
        "model: {cases} cases (seeds {base}..{}), {} reads, {} bytes compared, 0 wrong, {} errors (from 404s, broken hosts and hosts that cut every body), {requests} requests, {:.1} s",
        base + cases,
        counts.reads.load(Ordering::Relaxed),
        counts.bytes.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
        t.elapsed().as_secs_f64()
    );
}
