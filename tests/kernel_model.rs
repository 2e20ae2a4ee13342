//! Random reads through a real mount, checked byte for byte against the emulator's recordings.
//!
//! `tests/model.rs` checks the media layer against a model with no kernel in between; what the
//! kernel adds (its page cache, read-ahead, the size it holds while ringfs still has an
//! estimate, direct I/O, several readers of one inode) is checked here. Each case is drawn from
//! a seed: an account (MP3, WAV or both), the format the mount assumes for names and estimates
//! before it learns the real one (so the kernel may hold a size far too large or too small), a
//! media host whose answers vary per recording (`--media-mix`: no length, chunked or
//! close-delimited bodies, `Range` ignored, capped or without a total, drops, slow bodies, 5xx
//! and 404 at first), and reader scripts: plain reads of a random size without a `stat` first
//! (as `dd`), `stat` then read to the end (as `cat`), random `pread`s around the end, and two
//! readers of one file at once.
//!
//! A read returns the recording's bytes or an error; an error is allowed only on a recording
//! the media host refuses with 404 at first (EAGAIN or EIO, then its cool-down), and the script
//! is then run again until it succeeds. The seed is printed; `RINGFS_KERNEL_SEED=<seed> cargo
//! test --test kernel_model -- --nocapture` replays a case, `RINGFS_KERNEL_CASES` runs more
//! (8 by default, about 40 s). What goes wrong between the kernel and ringfs is often a race:
//! a seed replays the case, not the timing, so a failure may take a few runs to show again.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use ringfs::emulator::{AudioFormat, MediaBehaviour};

/// The path of recording `id` now: its name's extension changes once its real format is
/// learned, so it is looked up again before every script (listings cost no request).
fn path_of(root: &Path, id: &str) -> Option<PathBuf> {
    walk_files(root)
        .into_iter()
        .find(|p| {
            !p.starts_with("by-session")
                && !p.starts_with("by-recording")
                && p.extension().is_some_and(|e| e == "mp3" || e == "wav")
                && recording_id_of(p) == id
        })
        .map(|rel| root.join(rel))
}

#[derive(Clone, Copy, Debug)]
enum Script {
    /// Plain reads of `buf` bytes to the end, no `stat` first.
    Plain { buf: usize },
    /// `stat` (the exact size once known), then reads to the end; the size is checked after.
    StatThenRead,
    /// `pread`s at random offsets, near the end and past it.
    Preads { seed: u64 },
    /// A plain reader and a `pread` reader on one file at once.
    Two { buf: usize, seed: u64 },
}

fn draw_script(rng: &mut Rng) -> Script {
    let buf = rng.pick(&[1usize, 4096, 65536, 131_072, 200_000, 1 << 20]);
    match rng.below(20) {
        0..7 => Script::Plain { buf },
        7..11 => Script::StatThenRead,
        11..15 => Script::Preads { seed: rng.next() },
        _ => Script::Two {
            buf,
            seed: rng.next(),
        },
    }
}

/// Reads to the end in reads of `buf`; `Err` carries the bytes read before the error.
fn read_plain(path: &Path, buf: usize, stat_first: bool) -> Result<Vec<u8>, (Vec<u8>, String)> {
    let mut f = std::fs::File::open(path).map_err(|e| (Vec::new(), format!("open: {e}")))?;
    if stat_first {
        f.metadata()
            .map_err(|e| (Vec::new(), format!("fstat: {e}")))?;
    }
    let mut got = Vec::new();
    let mut b = vec![0u8; buf];
    loop {
        match f.read(&mut b) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) => {
                let what = format!("read at {}: {e}", got.len());
                return Err((got, what));
            }
        }
    }
}

/// Random `pread`s, each completed to its length or the end; every answer is checked here.
fn read_random(path: &Path, truth: &[u8], seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed);
    let f = std::fs::File::open(path).map_err(|e| format!("open: {e}"))?;
    let len = truth.len() as u64;
    for _ in 0..12 {
        let off = match rng.below(3) {
            0 => rng.below(len + 1),
            1 => len.saturating_sub(rng.below(5000)),
            _ => len + rng.below(300_000),
        };
        let want = rng.pick(&[1u64, 100, 4096, 65_536, 300_000]);
        let mut got = Vec::new();
        while (got.len() as u64) < want {
            let mut b = vec![0u8; (want - got.len() as u64) as usize];
            let n = f
                .read_at(&mut b, off + got.len() as u64)
                .map_err(|e| format!("pread {want} at {off}: {e}"))?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        let from = off.min(len) as usize;
        let to = (off + want).min(len) as usize;
        if got[..] != truth[from..to] {
            return Err(format!(
                "WRONG BYTES: pread {want} at {off} gave {} bytes, the recording has {} there (length {len})",
                got.len(),
                to - from
            ));
        }
    }
    // A seek past the end reads nothing.
    let mut f = f;
    f.seek(SeekFrom::Start(len + 10))
        .map_err(|e| e.to_string())?;
    let mut b = [0u8; 16];
    match f.read(&mut b) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("WRONG BYTES: {n} bytes past the end")),
        Err(e) => Err(format!("read past the end: {e}")),
    }
}

/// Checks what a whole read gave; `Err` with "WRONG" is never allowed.
fn check_whole(got: Result<Vec<u8>, (Vec<u8>, String)>, truth: &[u8]) -> Result<(), String> {
    match got {
        Ok(b) if b == truth => Ok(()),
        Ok(b) => {
            let at = b.iter().zip(truth).position(|(x, y)| x != y);
            Err(format!(
                "WRONG BYTES: read {} bytes of {}, first difference at {at:?}",
                b.len(),
                truth.len()
            ))
        }
        Err((b, e)) if truth.starts_with(&b) => Err(e),
        Err((b, e)) => Err(format!(
            "WRONG BYTES before an error ({e}): {} bytes",
            b.len()
        )),
    }
}

fn run_script(path: &Path, truth: &[u8], s: Script) -> Result<(), String> {
    // A file opened with direct I/O (its length untold) costs a round trip per read: byte-sized
    // reads are for small files only, or a case would take minutes.
    let small = |buf: usize| {
        if truth.len() > 200_000 {
            buf.max(4096)
        } else {
            buf
        }
    };
    let s = match s {
        Script::Plain { buf } => Script::Plain { buf: small(buf) },
        Script::Two { buf, seed } => Script::Two {
            buf: small(buf),
            seed,
        },
        s => s,
    };
    match s {
        Script::Plain { buf } => check_whole(read_plain(path, buf, false), truth),
        Script::StatThenRead => {
            check_whole(read_plain(path, 65_536, true), truth)?;
            let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
            if size != truth.len() as u64 {
                return Err(format!(
                    "WRONG SIZE: stat says {size} after a whole read of {}",
                    truth.len()
                ));
            }
            Ok(())
        }
        Script::Preads { seed } => read_random(path, truth, seed),
        Script::Two { buf, seed } => {
            let (p, t) = (path.to_path_buf(), truth.to_vec());
            let plain = std::thread::spawn(move || check_whole(read_plain(&p, buf, false), &t));
            let random = read_random(path, truth, seed);
            let plain = plain.join().unwrap();
            random.and(plain)
        }
    }
}

fn run_case(seed: u64) {
    let mut rng = Rng(seed);
    let mut cfg = quick_config(16, 2);
    cfg.seed = 1 + rng.below(1000);
    cfg.format = rng.pick(&[AudioFormat::Mp3, AudioFormat::Wav, AudioFormat::Mixed]);
    // Half the cases a plain media host (a length, `Range` honoured: what RingCentral's most
    // likely is), half the mix of what it may also do.
    let mix = rng.next();
    cfg.media = MediaBehaviour {
        mixed: rng.chance(50).then_some(mix),
        ..MediaBehaviour::default()
    };
    // Until a mount has opened one of its recordings, names and estimates follow the format it
    // assumes: the other one than the account's, mostly, so that the kernel's first sizes are
    // four times too large (MP3 named WAV) or too small.
    use ringfs::catalog::AudioKind;
    let other = match cfg.format {
        AudioFormat::Mp3 => AudioKind::Wav,
        AudioFormat::Wav => AudioKind::Mp3,
        AudioFormat::Mixed => rng.pick(&[AudioKind::Mp3, AudioKind::Wav]),
    };
    let assumed = if rng.chance(70) {
        other
    } else {
        rng.pick(&[AudioKind::Mp3, AudioKind::Wav])
    };
    // Slow bodies for the whole account half the time (besides the mix's own slow ones): a read
    // waiting for the network while the kernel's other reads of the file are answered.
    if rng.chance(50) {
        cfg.faults.max_bytes_per_sec = Some(200_000 + rng.below(1_000_000));
    }
    eprintln!(
        "[kernel model] seed {seed}: account {:?} (data seed {}), names assume {assumed:?}, bodies at most {:?} B/s, media mix {:?}",
        cfg.format, cfg.seed, cfg.faults.max_bytes_per_sec, cfg.media.mixed
    );
    let m = mount(stack(cfg, |fc| fc.assumed_format = assumed));
    // Recordings up to 6 MB keep a case to seconds.
    let ids: Vec<(String, Vec<u8>)> = walk_files(m.path())
        .into_iter()
        .filter(|p| {
            !p.starts_with("by-session")
                && !p.starts_with("by-recording")
                && p.extension().is_some_and(|e| e == "mp3" || e == "wav")
        })
        .filter_map(|p| {
            let id = recording_id_of(&p);
            let b = m.emu().recording_bytes(&id)?;
            (b.len() <= 6_000_000).then_some((id, b.to_vec()))
        })
        .collect();
    assert!(ids.len() >= 3, "seed {seed}: recordings to read");
    for round in 0..5 {
        let (id, truth) = &ids[rng.below(ids.len() as u64) as usize];
        let script = draw_script(&mut rng);
        let started = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let path = path_of(m.path(), id)
                .unwrap_or_else(|| panic!("seed {seed} round {round}: recording {id} is listed"));
            let r = run_script(&path, truth, script);
            match r {
                Ok(()) => break,
                Err(e) if e.starts_with("WRONG") => panic!(
                    "seed {seed} round {round}: recording {id} ({} bytes), {script:?}: {e}",
                    truth.len()
                ),
                // A 404 at first: EAGAIN or EIO, then the recording's cool-down.
                Err(e) if tries < 4 => {
                    eprintln!("[kernel model] seed {seed} round {round}: {id}: {e}; again");
                    std::thread::sleep(Duration::from_millis(1100 * tries));
                }
                Err(e) => panic!(
                    "seed {seed} round {round}: recording {id}, {script:?}: still failing after {tries} tries: {e}"
                ),
            }
        }
        eprintln!(
            "[kernel model] seed {seed} round {round}: {id} ({} bytes) {script:?}: {:?}, {tries} tries",
            truth.len(),
            started.elapsed()
        );
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "seed {seed} round {round}: {script:?} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn random_reads_through_the_kernel_return_the_recordings_bytes() {
    if !can_mount() {
        return;
    }
    let seeds: Vec<u64> = match std::env::var("RINGFS_KERNEL_SEED") {
        Ok(s) => vec![s.parse().expect("RINGFS_KERNEL_SEED is a number")],
        Err(_) => {
            let cases: u64 = std::env::var("RINGFS_KERNEL_CASES")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(8);
            let base = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            (0..cases).map(|i| base * 16 + i).collect()
        }
    };
    for seed in seeds {
        run_case(seed);
    }
}
