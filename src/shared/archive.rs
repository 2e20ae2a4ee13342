//! `ringfs archive`: every recording of a window that the bucket lacks, fetched and published.
//!
//! It runs a publisher's core without a mount (the same call log, media layer, pacer and
//! bucket tier as `--shared`): it lists every date of the window, newest first (the order the
//! call log pages in, so the listing costs about ceil(N/1000) requests, and the dates are
//! published as manifests on the way), then reads each recording the bucket does not hold,
//! newest first, one at a time, through the media layer: one media request each, at the pace
//! the rate limit allows, each one PUT in the background as it completes. What the bucket
//! holds is skipped, so an archive that was interrupted resumes where it stopped, and a rerun
//! spends nothing on recordings.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Bucket;
use super::tier::BucketTier;
use crate::fs::{Fs, FsError, Kind};

/// Where an archive is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Recordings in the window.
    pub recordings: usize,
    /// Of those, already in the bucket when the archive started.
    pub skipped: usize,
    /// Fetched so far (of `recordings - skipped`).
    pub fetched: usize,
    /// Failed (the recording could not be fetched; a rerun tries again).
    pub failed: usize,
    /// Bytes fetched.
    pub bytes: u64,
    /// Estimated time left at the current rate, once one recording was fetched.
    pub eta: Option<Duration>,
}

impl Progress {
    /// Recordings still to fetch.
    pub fn left(&self) -> usize {
        self.recordings - self.skipped - self.fetched - self.failed
    }
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let todo = self.recordings - self.skipped;
        write!(
            f,
            "{}/{} fetched ({} already in the bucket",
            self.fetched, todo, self.skipped
        )?;
        if self.failed > 0 {
            write!(f, ", {} failed", self.failed)?;
        }
        write!(f, "), {:.1} MiB", self.bytes as f64 / (1 << 20) as f64)?;
        if let Some(eta) = self.eta {
            let s = eta.as_secs();
            write!(f, ", ETA {}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)?;
        }
        Ok(())
    }
}

const ROOT: u64 = 1;

/// The recording id at the end of a recording file name (`... <id>.mp3`).
fn recording_id(name: &str) -> Option<&str> {
    let stem = name.rsplit_once('.')?.0;
    stem.rsplit(' ').next()
}

/// Archives the window of `fs` (a publisher's core over `tier`) into `bucket`; `progress` is
/// called after the listing and after each recording.
pub async fn archive(
    fs: &Fs,
    bucket: &Bucket,
    tier: &BucketTier,
    mut progress: impl FnMut(&Progress),
) -> Result<Progress, FsError> {
    // The listing: every date, newest first (readdir order), each recording once.
    let mut todo: Vec<(u64, String)> = Vec::new();
    let mut p = Progress::default();
    let mut seen = std::collections::HashSet::new();
    for date in fs.opendir(ROOT).await? {
        if date.kind != Kind::Dir || date.name.starts_with("by-") {
            continue;
        }
        let d = fs.lookup(ROOT, OsStr::new(&date.name)).await?;
        for session in fs.opendir(d.ino).await? {
            if session.kind != Kind::Dir {
                continue; // calls.csv
            }
            let s = fs.lookup(d.ino, OsStr::new(&session.name)).await?;
            for file in fs.opendir(s.ino).await? {
                let Some(id) = recording_id(&file.name) else {
                    continue;
                };
                if file.name == "call.json" || !seen.insert(id.to_string()) {
                    continue;
                }
                p.recordings += 1;
                if bucket.held(id).is_some() {
                    p.skipped += 1;
                } else {
                    let f = fs.lookup(s.ino, OsStr::new(&file.name)).await?;
                    todo.push((f.ino, id.to_string()));
                }
            }
        }
    }
    progress(&p);
    let start = Instant::now();
    for (ino, id) in todo {
        match read_whole(fs, ino).await {
            Ok(n) => {
                p.fetched += 1;
                p.bytes += n;
            }
            Err(e) => {
                tracing::warn!("recording {id}: {e}");
                p.failed += 1;
            }
        }
        let done = p.fetched + p.failed;
        let per = start.elapsed() / done as u32;
        p.eta = Some(per * p.left() as u32);
        progress(&p);
    }
    // What was fetched last is still being PUT.
    if !tier.flush(Duration::from_secs(120)).await {
        tracing::warn!("{} recordings were not published yet", tier.queued());
    }
    Ok(p)
}

/// Reads a recording to its end through the core (its bytes go to the bucket tier's writer);
/// returns its size.
async fn read_whole(fs: &Fs, ino: u64) -> Result<u64, FsError> {
    let opened = fs.open(ino, false).await?;
    let mut at = 0u64;
    let r = loop {
        match fs.read(ino, opened.fh, at, 1 << 20).await {
            Ok(b) if b.is_empty() => break Ok(at),
            Ok(b) => at += b.len() as u64,
            Err(e) => break Err(e),
        }
    };
    fs.release(opened.fh);
    r
}

/// The recordings an archive run found held, for the CLI's last line.
pub fn summary(p: &Progress, bucket: &Arc<Bucket>) -> String {
    format!(
        "{p}; {} holds {} of them now",
        bucket.url(),
        p.skipped + p.fetched
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_from_names() {
        assert_eq!(
            super::recording_id("10-31-02 Inbound +15551234567 44444444.mp3"),
            Some("44444444")
        );
        assert_eq!(super::recording_id("call.json"), Some("call"));
    }
}
