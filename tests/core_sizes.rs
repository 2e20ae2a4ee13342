//! `st_size` as the kernel sees it, checked against the truth over generated cases, without a
//! kernel: the filesystem core over a scripted call log and a fake media host that answers every
//! request its own way (length stated or not, chunked or delimited by the connection, Range
//! honoured or ignored, drops at random bytes).
//!
//! The rule under test: a size the core publishes with a non-zero attribute TTL (one the kernel
//! keeps, and cuts reads at) is the recording's exact size; until then the size is an estimate
//! with a zero TTL and the file is opened with direct I/O. A lower bound, the bytes received so
//! far, is never published. `RINGFS_SIZES_SEED=<seed>` replays one case.

mod common;

// This binary uses only part of the scripted log.
#[allow(dead_code)]
#[path = "core/scripted.rs"]
mod scripted;

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use ringfs::catalog::Window;
use ringfs::fs::{Attr, Fs, FsConfig};
use ringfs::media::fake::{FakeRange, FakeRecording, FakeSource, Reply};
use ringfs::media::{Media, MediaConfig};

use common::Rng;
use scripted::{Call, ScriptedLog};

/// Looks `path` up from the root.
async fn lookup(fs: &Fs, path: &str) -> Attr {
    let mut attr = fs.getattr(1).await.unwrap();
    for name in path.split('/').filter(|n| !n.is_empty()) {
        attr = fs.lookup(attr.ino, OsStr::new(name)).await.unwrap();
    }
    attr
}

fn check(attr: &Attr, truth: u64, when: &str) -> Result<(), String> {
    if !attr.attr_ttl.is_zero() && attr.size != truth {
        return Err(format!(
            "{when}: size {} kept for {:?}, truth {truth}",
            attr.size, attr.attr_ttl
        ));
    }
    Ok(())
}

async fn case(seed: u64) -> Result<(), String> {
    let mut r = Rng(seed);
    let len = match r.below(4) {
        0 => r.below(3),
        _ => 1 + r.below(900_000),
    };
    let day = Timestamp::now()
        .checked_sub(SignedDuration::from_hours(50))
        .unwrap();
    let log = ScriptedLog::new(&[Call::new("1234567890", day, "44444444")]);
    let content_seed = r.next();
    let replies_seed = r.next();
    let fake = FakeSource::new()
        .with_piece(1 + r.below(70_000) as usize)
        .with_replies(Arc::new(move |_: &str, offset: u64, n: usize| {
            let mut r = Rng(replies_seed ^ (n as u64).wrapping_mul(0x2545_F491_4F6C_DD1D) ^ offset);
            let length = r.below(2) == 0;
            Reply::Body {
                length,
                range: if r.below(2) == 0 {
                    FakeRange::Honour
                } else {
                    FakeRange::Ignore
                },
                bare_416: r.below(2) == 0,
                // Drops on the first two answers only: within the request budget.
                drop_at: (n < 2 && len > 1 && r.below(2) == 0).then(|| 1 + r.below(len - 1)),
                close_delimited: !length && r.below(2) == 0,
            }
        }));
    fake.add("44444444", FakeRecording::new(len, content_seed));
    let fake = Arc::new(fake);
    let config = FsConfig::new(Window::last_days(5, TimeZone::UTC));
    let media = Media::new(fake.clone(), MediaConfig::default());
    let fs = Fs::new(Arc::new(log), media, config);

    let date = day.to_zoned_datetime(TimeZone::UTC).date().to_string();
    let root = lookup(&fs, &date).await;
    let session = fs.opendir(root.ino).await.unwrap()[0].name.clone();
    let dir = lookup(&fs, &format!("{date}/{session}")).await;
    let file_name = fs
        .opendir(dir.ino)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.name.ends_with(".mp3"))
        .unwrap()
        .name;
    let path = format!("{date}/{session}/{file_name}");
    let attr = lookup(&fs, &path).await;
    check(&attr, len, "before open")?;
    let opened = fs
        .open(attr.ino, false)
        .await
        .map_err(|e| format!("open: {e}"))?;
    let after_open = fs.getattr(attr.ino).await.unwrap();
    check(&after_open, len, "after open")?;
    if opened.direct_io != after_open.attr_ttl.is_zero() {
        return Err(format!(
            "direct I/O {} but attributes {:?}",
            opened.direct_io, after_open
        ));
    }
    // Read in kernel-sized pieces, with a stat between, to the end.
    let mut pos = 0u64;
    loop {
        let size = [4096u32, 65_536, 131_072][r.below(3) as usize];
        let got = fs
            .read(attr.ino, opened.fh, pos, size)
            .await
            .map_err(|e| format!("read at {pos}: {e}"))?;
        check(
            &fs.getattr(attr.ino).await.unwrap(),
            len,
            &format!("after a read at {pos}"),
        )?;
        if got.is_empty() {
            break;
        }
        pos += got.len() as u64;
    }
    if pos != len {
        return Err(format!("read {pos} bytes of {len}"));
    }
    fs.release(opened.fh);
    let last = fs.getattr(attr.ino).await.unwrap();
    if last.size != len || last.attr_ttl.is_zero() {
        return Err(format!("after reading it all: {last:?}, truth {len}"));
    }
    Ok(())
}

#[test]
fn a_published_size_is_the_exact_size() {
    let seeds: Vec<u64> = match std::env::var("RINGFS_SIZES_SEED") {
        Ok(s) => vec![s.parse().expect("a number")],
        Err(_) => (0..400).map(|i| 0x51_2E00 + i).collect(),
    };
    for seed in &seeds {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let result = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(600), case(*seed))
                .await
                .unwrap_or(Err("hung".into()))
        });
        if let Err(e) = result {
            panic!(
                "case {seed}: {e}\n  replay: RINGFS_SIZES_SEED={seed} cargo test --test core_sizes"
            );
        }
    }
    println!("[sizes] {} cases, every published size exact", seeds.len());
}
