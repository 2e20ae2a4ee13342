//! What `ringfs status` shows: the progress of a mount under the rate limit, gathered from
//! what the pacer, the media layer, the disk store and the core already hold (no request is
//! ever sent to answer it), the estimate of when queued work is done, and its text rendering.
//!
//! # The estimate
//! Downloads are Heavy requests, and the Heavy group allows ~10 a minute: what a user waiting
//! on a copy wants to know is how many requests are still to go and when the pacer will have
//! let the last one through. The work counted is
//! - the downloads the media layer runs whose request has not gone yet (waiting in the pacer,
//!   [`DownloadInfo::started`] false), and every Heavy waiter of the pacer ahead of them;
//! - the recordings of the dates being read through that were never fetched: a date counts
//!   once two different recordings of it were opened one after the other, the last within
//!   [`READING_WITHIN`] ([`Fs::reading`]), as a program that reads a date through (`cp -r`,
//!   `rsync`) does, one request each. The mount cannot know that the program will read them
//!   all; it says so ("if the rest of DATE is read").
//!
//! The pacer's own rule is then played forward over its send log ([`crate::api::pacer::grant_times`]): at most
//! `limit` requests counted at once, each counting from its grant until `window + margin`
//! after its answer (a measured round trip), nothing before a hold after a 429 ends. The last
//! grant plus one round trip is "all done". With the limit reached, the rate is `limit` per
//! `window + margin`, which the summary shows per minute.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::api::Client;
use crate::api::pacer::{GroupSnapshot, RateGroup, RequestKind};
use crate::fs::Fs;
use crate::media::DownloadInfo;
use crate::store::DiskStore;

/// A date counts as being read while a recording of it was opened this recently.
pub const READING_WITHIN: Duration = Duration::from_secs(120);

/// What the mount adds to the core's [`crate::control::Status`].
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Seconds since the mount started.
    pub uptime_secs: f64,
    pub account: Account,
    /// Per rate group: the pacer's count, the service's last word, holds and waiters.
    pub rate: Vec<GroupStatus>,
    /// Downloads running now (their request may still be waiting).
    pub downloads: Vec<DownloadStatus>,
    /// Queued work and when it is done.
    pub queue: Queue,
    pub memory_cache: MemoryCache,
    /// `None` without a disk cache.
    pub disk_cache: Option<DiskCache>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Account {
    /// The API server (`host[:port]`).
    pub server: String,
    /// `account` or `extension` once the first listing decided it, else `null`.
    pub scope: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    /// `Heavy`, `Auth`, `Light`, `Medium`.
    pub group: &'static str,
    pub limit: u32,
    pub window_secs: f64,
    /// Whether `limit` and `window_secs` came from the service (else the contract's defaults).
    pub learned: bool,
    /// Requests counted against the limit now by the pacer (in flight, and answered within
    /// the window and the pacer's margin).
    pub used: u32,
    /// `limit - used`.
    pub remaining: u32,
    pub in_flight: u32,
    /// Seconds left on a hold after a 429 (`Retry-After`), when one is in force.
    pub hold_secs: Option<f64>,
    /// When that hold ends (RFC 3339, UTC).
    pub hold_ends_at: Option<String>,
    /// Requests waiting for the pacer, in grant order.
    pub waiting: Vec<Waiter>,
    /// Seconds until the first waiter goes, when one waits.
    pub next_in_secs: Option<f64>,
    /// The steady rate the pacer allows, per minute.
    pub per_minute: f64,
    /// The last `X-Rate-Limit-*` headers of the service.
    pub server: Option<ServerSaid>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Waiter {
    /// `interactive` or `background`.
    pub priority: &'static str,
    /// `listing`, `download`, `auth`, `other`.
    pub kind: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerSaid {
    pub limit: Option<u32>,
    pub remaining: Option<u32>,
    pub window_secs: Option<u64>,
    /// How long ago.
    pub age_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DownloadStatus {
    pub recording: String,
    /// Relative to the mount root, when the call log placed it.
    pub path: Option<String>,
    /// Content offset reached (bytes from 0 when it started at 0).
    pub done: u64,
    /// Where its first request started.
    pub start: u64,
    /// The recording's size, when known.
    pub size: Option<u64>,
    /// Whether its request has gone (response headers in).
    pub started: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Queue {
    /// Downloads whose request has not gone yet.
    pub downloads_waiting: usize,
    /// Downloads receiving their body.
    pub downloads_in_flight: usize,
    /// Recordings of the dates being read never fetched (see the module docs).
    pub unfetched: usize,
    /// The dates being read, newest use first.
    pub dates: Vec<DateBeingRead>,
    /// Heavy requests still to go for the work above (waiters ahead included).
    pub requests: usize,
    /// Seconds until the next Heavy request goes, when one waits.
    pub next_in_secs: Option<f64>,
    /// Seconds until the waiting downloads have gone and answered.
    pub queue_done_in_secs: Option<f64>,
    /// Seconds until the unfetched recordings have gone too.
    pub all_done_in_secs: Option<f64>,
    /// The Heavy rate the estimate assumes, per minute.
    pub per_minute: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DateBeingRead {
    pub date: String,
    pub recordings: usize,
    pub unfetched: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryCache {
    pub bytes: u64,
    pub cap: u64,
    /// Reads answered from memory at once.
    pub hits: u64,
    /// Reads that waited for a download or the disk.
    pub misses: u64,
    pub hit_rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskCache {
    pub bytes: u64,
    pub cap: u64,
    pub recordings: u64,
    /// Reads of the disk that brought bytes into memory, and whole files handed to the kernel:
    /// bytes that cost no request.
    pub hits: u64,
    /// Media requests sent: bytes the disk did not hold.
    pub misses: u64,
    pub hit_rate: Option<f64>,
}

/// Where a mount's status comes from; [`Sources::progress`] reads them all, without a request.
#[derive(Clone)]
pub struct Sources {
    pub fs: Arc<Fs>,
    pub client: Client,
    pub disk: Option<Arc<DiskStore>>,
    /// The disk cache's byte limit.
    pub disk_cap: u64,
    pub started: Instant,
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn rate(hits: u64, misses: u64) -> Option<f64> {
    let all = hits + misses;
    (all > 0).then(|| (hits as f64 / all as f64 * 1000.0).round() / 1000.0)
}

/// The estimate of the module docs, from the Heavy pacer's snapshot: `waiting_downloads`
/// downloads whose request has not gone, then `unfetched` more.
pub fn estimate(heavy: &GroupSnapshot, waiting_downloads: usize, unfetched: usize) -> Queue {
    // Every Heavy waiter goes before a download queued after it (a listing too), and a download
    // may not have reached the pacer yet (it waits for a token): whichever is more.
    let queued = heavy.waiting.len().max(waiting_downloads);
    let requests = queued + unfetched;
    let grants = heavy.grants(requests);
    let done = |n: usize| {
        n.checked_sub(1)
            .and_then(|i| grants.get(i))
            .map(|t| secs(*t + heavy.round_trip))
    };
    Queue {
        downloads_waiting: waiting_downloads,
        downloads_in_flight: 0,
        unfetched,
        dates: Vec::new(),
        requests,
        next_in_secs: (queued > 0)
            .then(|| grants.first().map(|t| secs(*t)))
            .flatten(),
        queue_done_in_secs: done(queued),
        all_done_in_secs: done(requests),
        per_minute: (heavy.per_minute() * 10.0).round() / 10.0,
    }
}

fn group_status(s: &GroupSnapshot) -> GroupStatus {
    GroupStatus {
        group: s.group.name(),
        limit: s.limit,
        window_secs: secs(s.window),
        learned: s.learned,
        used: s.used,
        remaining: s.remaining(),
        in_flight: s.in_flight,
        hold_secs: s.hold.map(secs),
        hold_ends_at: s.hold.and_then(|h| {
            let h = jiff::SignedDuration::try_from(h).ok()?;
            Some(
                jiff::Timestamp::now()
                    .checked_add(h)
                    .ok()?
                    .round(jiff::Unit::Second)
                    .ok()?
                    .to_string(),
            )
        }),
        waiting: s
            .waiting
            .iter()
            .map(|(p, k)| Waiter {
                priority: match p {
                    crate::api::Priority::Interactive => "interactive",
                    crate::api::Priority::Background => "background",
                },
                kind: RequestKind::name(*k),
            })
            .collect(),
        next_in_secs: s.next_in().map(secs),
        per_minute: (s.per_minute() * 10.0).round() / 10.0,
        server: s.server.map(|(c, age)| ServerSaid {
            limit: c.limit,
            remaining: c.remaining,
            window_secs: c.window.map(|w| w.as_secs()),
            age_secs: secs(age),
        }),
    }
}

fn host_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => url.to_owned(),
        },
        Err(_) => url.to_owned(),
    }
}

impl Sources {
    /// Everything [`Progress`] shows, from what is held in memory.
    pub fn progress(&self) -> Progress {
        let snaps = self.client.rate_snapshot();
        let heavy = snaps
            .iter()
            .find(|s| s.group == RateGroup::Heavy)
            .expect("a Heavy pacer");
        let media = self.fs.media();
        let downloads: Vec<DownloadInfo> = media.downloads();
        let reading = self.fs.reading(READING_WITHIN);
        let waiting = downloads.iter().filter(|d| !d.started).count();
        let in_flight = downloads.iter().filter(|d| d.started).count();
        let unfetched = reading.iter().map(|r| r.unfetched).sum();
        let mut queue = estimate(heavy, waiting, unfetched);
        queue.downloads_in_flight = in_flight;
        queue.dates = reading
            .iter()
            .map(|r| DateBeingRead {
                date: r.date.to_string(),
                recordings: r.recordings,
                unfetched: r.unfetched,
            })
            .collect();
        let ms = media.stats();
        Progress {
            uptime_secs: secs(self.started.elapsed()),
            account: Account {
                server: host_of(self.client.server_url()),
                scope: self.fs.scope_in_use().map(|s| s.name()),
            },
            rate: snaps.iter().map(group_status).collect(),
            downloads: downloads
                .iter()
                .map(|d| DownloadStatus {
                    recording: d.id.clone(),
                    path: self.fs.path_of(&d.id),
                    done: d.pos,
                    start: d.start,
                    size: d.size,
                    started: d.started,
                })
                .collect(),
            queue,
            memory_cache: MemoryCache {
                bytes: ms.bytes_cached,
                cap: media.cache_cap(),
                hits: ms.cache_hits,
                misses: ms.cache_misses,
                hit_rate: rate(ms.cache_hits, ms.cache_misses),
            },
            disk_cache: self.disk.as_ref().map(|d| {
                let ds = d.stats();
                let hits = ms.disk_reads + ms.complete_files;
                DiskCache {
                    bytes: ds.bytes,
                    cap: self.disk_cap,
                    recordings: ds.recordings,
                    hits,
                    misses: ms.opens,
                    hit_rate: rate(hits, ms.opens),
                }
            }),
        }
    }
}

/// Whole and fractional units: `512 B`, `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    let mut v = n as f64;
    for u in ["B", "KiB", "MiB", "GiB"] {
        if v < 1024.0 {
            return if u == "B" {
                format!("{n} B")
            } else {
                format!("{v:.1} {u}")
            };
        }
        v /= 1024.0;
    }
    format!("{v:.1} TiB")
}

/// `0.4s`, `12s`, `3m 05s`, `2h 03m`.
pub fn duration(s: f64) -> String {
    if s < 10.0 {
        return format!("{s:.1}s");
    }
    let t = s.round() as u64;
    match t {
        0..60 => format!("{t}s"),
        60..3600 => format!("{}m {:02}s", t / 60, t % 60),
        _ => format!("{}h {:02}m", t / 3600, t % 3600 / 60),
    }
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn pct(v: &Value) -> String {
    f(v).map_or("-".into(), |r| format!("{:.0} %", r * 100.0))
}

/// The readable summary of one status object (as the socket sent it: a newer or older mount's
/// fields that are missing are left out).
pub fn render(st: &Value) -> String {
    let mut out = Vec::new();
    let mnt = st["mountpoint"].as_str().unwrap_or("?");
    match f(&st["uptime_secs"]) {
        Some(up) => out.push(format!("ringfs on {mnt} (up {})", duration(up))),
        None => out.push(format!("ringfs on {mnt}")),
    }
    let row = |out: &mut Vec<String>, k: &str, v: String| out.push(format!("  {k:<9} {v}"));
    if let Some(a) = st.get("account") {
        let scope = match a["scope"].as_str() {
            Some(s) => format!("{s} call log"),
            None => "call log not read yet".into(),
        };
        row(
            &mut out,
            "account",
            format!("{}, {scope}", a["server"].as_str().unwrap_or("?")),
        );
    }
    let ev = &st["events"];
    let events = match ev["state"].as_str() {
        Some("unavailable") => format!("unavailable ({})", ev["reason"].as_str().unwrap_or("")),
        Some(s) => s.to_owned(),
        None => "?".into(),
    };
    row(
        &mut out,
        "events",
        format!("{events}, {} received", u(&st["live"]["events"])),
    );
    for g in st["rate"].as_array().into_iter().flatten() {
        let name = g["group"].as_str().unwrap_or("?");
        // A group nothing was sent in is left out, unless something waits there.
        if u(&g["used"]) == 0 && g["server"].is_null() && g["hold_secs"].is_null() {
            continue;
        }
        let mut line = format!(
            "{} of {} used in the {}s window, {} left",
            u(&g["used"]),
            u(&g["limit"]),
            f(&g["window_secs"]).unwrap_or(0.0),
            u(&g["remaining"]),
        );
        if let Some(rem) = g["server"]["remaining"].as_u64() {
            line += &format!(
                " (service: {rem} left {} ago)",
                duration(f(&g["server"]["age_secs"]).unwrap_or(0.0))
            );
        }
        if let Some(h) = f(&g["hold_secs"]) {
            line += &format!("; ON HOLD after a 429 for {} more", duration(h));
        }
        let waiting = g["waiting"].as_array().map_or(0, Vec::len);
        if waiting > 0 {
            let kinds = |k: &str| {
                g["waiting"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|w| w["kind"] == k)
                    .count()
            };
            let mut parts = Vec::new();
            for k in ["download", "listing", "auth", "other"] {
                let n = kinds(k);
                if n > 0 {
                    parts.push(format!("{n} {k}"));
                }
            }
            line += &format!("; {} waiting", parts.join(", "));
            if let Some(n) = f(&g["next_in_secs"]) {
                line += &format!(", next in {}", duration(n));
            }
        }
        row(&mut out, name, line);
    }
    let q = &st["queue"];
    if q.is_object() {
        let waiting = u(&q["downloads_waiting"]);
        let flying = u(&q["downloads_in_flight"]);
        let unfetched = u(&q["unfetched"]);
        let total = waiting + flying + unfetched;
        if total == 0 {
            row(&mut out, "queue", "no download queued".into());
        } else {
            let mut line =
                format!("{total} downloads queued ({waiting} waiting, {flying} in flight");
            if unfetched > 0 {
                let dates: Vec<String> = q["dates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|d| u(&d["unfetched"]) > 0)
                    .map(|d| d["date"].as_str().unwrap_or("?").to_owned())
                    .collect();
                line += &format!(
                    ", {unfetched} not fetched yet if the rest of {} is read",
                    dates.join(", ")
                );
            }
            line += ")";
            if let Some(n) = f(&q["next_in_secs"]) {
                line += &format!(", next in {}", duration(n));
            }
            if let Some(a) = f(&q["all_done_in_secs"]) {
                line += &format!(
                    ", all done in ~{} at {}/min",
                    duration(a),
                    f(&q["per_minute"]).map_or("?".into(), |r| format!("{r:.0}"))
                );
            }
            row(&mut out, "queue", line);
        }
    }
    for d in st["downloads"].as_array().into_iter().flatten() {
        let what = d["path"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("recording {}", d["recording"].as_str().unwrap_or("?")));
        let done = u(&d["done"]);
        let progress = if d["started"] == false {
            "waiting for its request".to_owned()
        } else {
            match d["size"].as_u64() {
                Some(size) if size > 0 => format!(
                    "{} of {} ({:.0} %)",
                    bytes(done),
                    bytes(size),
                    done as f64 / size as f64 * 100.0
                ),
                _ => format!("{} (size not known yet)", bytes(done)),
            }
        };
        row(&mut out, "download", format!("{what}: {progress}"));
    }
    let m = &st["memory_cache"];
    if m.is_object() {
        row(
            &mut out,
            "memory",
            format!(
                "{} of {}, {} hits / {} misses ({})",
                bytes(u(&m["bytes"])),
                bytes(u(&m["cap"])),
                u(&m["hits"]),
                u(&m["misses"]),
                pct(&m["hit_rate"])
            ),
        );
    }
    let d = &st["disk_cache"];
    if d.is_object() {
        row(
            &mut out,
            "disk",
            format!(
                "{} of {} in {} recordings, {} hits / {} misses ({})",
                bytes(u(&d["bytes"])),
                bytes(u(&d["cap"])),
                u(&d["recordings"]),
                u(&d["hits"]),
                u(&d["misses"]),
                pct(&d["hit_rate"])
            ),
        );
    } else if st.get("disk_cache").is_some() {
        row(&mut out, "disk", "no disk cache".into());
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Priority;

    fn heavy(limit: u32, window_s: u64) -> GroupSnapshot {
        let window = Duration::from_secs(window_s);
        GroupSnapshot {
            group: RateGroup::Heavy,
            limit,
            window,
            learned: true,
            keep: window + Duration::from_millis(300),
            used: 0,
            in_flight: 0,
            hold: None,
            waiting: Vec::new(),
            frees_in: Vec::new(),
            open: 0,
            probing: false,
            round_trip: Duration::from_millis(10),
            server: None,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn the_estimate_plays_the_pacers_rule_forward() {
        // 6 per 3 s (+300 ms margin), an empty log, 20 downloads: 6 at once, then 6 each time
        // the first of a batch stops counting (3.3 s after its answer, 10 ms after its grant).
        let q = estimate(&heavy(6, 3), 0, 20);
        assert_eq!(q.requests, 20);
        assert_eq!(q.next_in_secs, None, "nothing waits in the pacer");
        assert_eq!(q.queue_done_in_secs, None);
        // The 19th and 20th go in the fourth batch: 3 * 3.31 s, then their answer, 10 ms.
        assert!(
            close(q.all_done_in_secs.unwrap(), 3.0 * 3.31 + 0.01),
            "{q:?}"
        );
        assert!(close(
            q.per_minute,
            (6.0 * 60.0 / 3.3_f64 * 10.0).round() / 10.0
        ));

        // Four slots taken (two answered 1 s and 2 s ago, two in flight), one download waiting
        // in the pacer, 3 more unfetched: the waiter and one more go now, then one slot frees
        // 2.3 s from now, one 1.3 s... the log decides.
        let mut h = heavy(6, 3);
        h.frees_in = vec![Duration::from_millis(1300), Duration::from_millis(2300)];
        h.open = 2;
        h.used = 4;
        h.waiting = vec![(Priority::Interactive, RequestKind::Download)];
        let q = estimate(&h, 1, 3);
        assert_eq!(q.requests, 4);
        assert_eq!(q.next_in_secs, Some(0.0));
        assert!(close(q.queue_done_in_secs.unwrap(), 0.01));
        // Grants at 0, 0, then 1.3 (oldest answered leaves), 2.3: done 10 ms after the last.
        assert!(close(q.all_done_in_secs.unwrap(), 2.31), "{q:?}");
    }

    #[test]
    fn a_hold_delays_everything_until_it_ends() {
        let mut h = heavy(10, 60);
        h.keep = Duration::from_secs(62);
        h.hold = Some(Duration::from_secs(25));
        h.waiting = vec![(Priority::Background, RequestKind::Download); 12];
        let q = estimate(&h, 12, 0);
        assert_eq!(q.next_in_secs, Some(25.0));
        // 10 at the end of the hold, the 11th and 12th a window (+2 s margin) after those.
        assert!(
            close(q.queue_done_in_secs.unwrap(), 25.0 + 62.01 + 0.01),
            "{q:?}"
        );
        assert!(close(
            q.per_minute,
            (600.0_f64 / 62.0 * 10.0).round() / 10.0
        ));
    }

    #[test]
    fn grant_times_never_put_more_than_limit_in_a_keep() {
        let frees = [Duration::from_millis(500)];
        let t = crate::api::pacer::grant_times(&crate::api::pacer::Backlog {
            limit: 2,
            keep: Duration::from_secs(1),
            hold: Duration::ZERO,
            frees_in: &frees,
            open: 1,
            round_trip: Duration::ZERO,
            n: 5,
        });
        let ms: Vec<u128> = t.iter().map(Duration::as_millis).collect();
        // Two slots taken (one frees at 0.5 s, one in flight: 1 s); then each grant's slot frees
        // 1 s after it.
        assert_eq!(ms, vec![500, 1000, 1500, 2000, 2500]);
    }

    #[test]
    fn the_summary_has_the_key_lines() {
        let st = serde_json::json!({
            "mountpoint": "/mnt/calls",
            "events": {"state": "live"},
            "live": {"events": 3},
            "uptime_secs": 125.0,
            "account": {"server": "platform.ringcentral.com", "scope": "account"},
            "rate": [
                {"group": "Light", "used": 0, "limit": 50, "remaining": 50, "window_secs": 60.0,
                 "server": null, "hold_secs": null, "waiting": []},
                {"group": "Heavy", "used": 10, "limit": 10, "remaining": 0, "window_secs": 60.0,
                 "server": {"remaining": 0, "age_secs": 4.0}, "hold_secs": 12.4,
                 "waiting": [{"kind": "download", "priority": "interactive"},
                             {"kind": "listing", "priority": "background"}],
                 "next_in_secs": 12.4}
            ],
            "queue": {"downloads_waiting": 1, "downloads_in_flight": 1, "unfetched": 5,
                      "dates": [{"date": "2026-11-30", "recordings": 9, "unfetched": 5}],
                      "next_in_secs": 12.4, "all_done_in_secs": 74.0, "per_minute": 9.7},
            "downloads": [
                {"recording": "42", "path": "2026-11-30/a/b.mp3", "done": 1024, "size": 4096,
                 "started": true},
                {"recording": "43", "path": null, "done": 0, "size": null, "started": false}
            ],
            "memory_cache": {"bytes": 1536, "cap": 268435456, "hits": 3, "misses": 1,
                             "hit_rate": 0.75},
            "disk_cache": null
        });
        let text = render(&st);
        let has = |s: &str| assert!(text.contains(s), "{s:?} not in:\n{text}");
        has("ringfs on /mnt/calls (up 2m 05s)");
        has("account   platform.ringcentral.com, account call log");
        has("events    live, 3 received");
        has("Heavy     10 of 10 used in the 60s window, 0 left (service: 0 left 4.0s ago)");
        has("ON HOLD after a 429 for 12s more; 1 download, 1 listing waiting, next in 12s");
        has(
            "queue     7 downloads queued (1 waiting, 1 in flight, 5 not fetched yet if the rest \
             of 2026-11-30 is read), next in 12s, all done in ~1m 14s at 10/min",
        );
        has("download  2026-11-30/a/b.mp3: 1.0 KiB of 4.0 KiB (25 %)");
        has("download  recording 43: waiting for its request");
        has("memory    1.5 KiB of 256.0 MiB, 3 hits / 1 misses (75 %)");
        has("disk      no disk cache");
        assert!(
            !text.contains("Light"),
            "an unused group is left out:\n{text}"
        );
    }
}
