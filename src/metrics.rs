//! Instruments for what the layers' own counters do not hold: requests by rate group and
//! outcome, bytes downloaded, and latency histograms (time to the first byte of a recording's
//! body, time to its end). Lock-free atomics, written where the events happen (the transport
//! and the media stream) and read by the `/metrics` endpoint ([`crate::scrape`]), which also
//! reads the layers' counters (`Client::stats`, `Media::stats`, the disk store's).
//!
//! Process-wide on purpose: one mount is one process, and an instrument that has to be handed
//! down through every constructor is one that does not get used. This module uses no other
//! ringfs module, so every layer may write to it.
//!
//! [`Text`] writes the Prometheus text exposition format (version 0.0.4): `# HELP` and `# TYPE`
//! once per family, then `name{labels} value` lines; histograms as cumulative `_bucket{le=..}`
//! lines ending with `le="+Inf"`, then `_sum` and `_count`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// A histogram of durations with fixed bucket bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then the overflow (+Inf); not cumulative (summed when rendered).
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

/// Latency bounds from 5 ms (a cached or loopback answer) to a minute (a throttled request
/// waiting out its group).
const LATENCY: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Whole downloads: a recording of an hour is tens of megabytes.
const DOWNLOAD: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// From sending a media request to the first byte of its body.
pub static FIRST_BYTE: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(LATENCY));
/// From sending a media request to the clean end of its body.
pub static DOWNLOAD_TIME: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(DOWNLOAD));
/// Media body bytes received (bytes skipped for a server that ignored Range included: they
/// were downloaded all the same).
pub static BYTES_DOWNLOADED: AtomicU64 = AtomicU64::new(0);

/// Requests sent, by (rate group, outcome). A mutex: there are a few requests a second at most.
static REQUESTS: LazyLock<Mutex<BTreeMap<(&'static str, &'static str), u64>>> =
    LazyLock::new(Mutex::default);

/// Counts one request of `group` with `outcome` (see [`outcome_of_status`]).
pub fn request(group: &'static str, outcome: &'static str) {
    let mut m = REQUESTS.lock().unwrap_or_else(|e| e.into_inner());
    *m.entry((group, outcome)).or_default() += 1;
}

/// The outcome label of an HTTP answer: `ok` (2xx), `throttled` (429), `client_error` (other
/// 4xx), `server_error` (5xx), `other`.
pub fn outcome_of_status(status: u16) -> &'static str {
    match status {
        200..=299 => "ok",
        429 => "throttled",
        400..=499 => "client_error",
        500..=599 => "server_error",
        _ => "other",
    }
}

/// Requests counted so far, by (group, outcome).
pub fn requests() -> BTreeMap<(&'static str, &'static str), u64> {
    REQUESTS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A Prometheus text exposition being written.
#[derive(Default)]
pub struct Text(String);

impl Text {
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A counter family: one sample per label set.
    pub fn counter(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], u64)]) {
        self.family(name, help, "counter");
        for (labels, v) in samples {
            self.sample(name, labels, *v as f64);
        }
    }

    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
        self.family(name, help, "gauge");
        for (labels, v) in samples {
            self.sample(name, labels, *v);
        }
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, help, "histogram");
        let mut total = 0;
        let bucket = format!("{name}_bucket");
        for (i, b) in h.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            let le = h
                .bounds
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            self.sample(&bucket, &[("le", &le)], total as f64);
        }
        let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], total as f64);
    }

    pub fn finish(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_end_with_inf() {
        static B: &[f64] = &[0.1, 1.0];
        let h = Histogram::new(B);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let mut t = Text::default();
        t.histogram("x_seconds", "test", &h);
        let out = t.finish();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "# HELP x_seconds test",
                "# TYPE x_seconds histogram",
                "x_seconds_bucket{le=\"0.1\"} 1",
                "x_seconds_bucket{le=\"1\"} 2",
                "x_seconds_bucket{le=\"+Inf\"} 3",
                "x_seconds_sum 5.55",
                "x_seconds_count 3",
            ]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut t = Text::default();
        t.counter("c_total", "help", &[(&[("a", "q\"b\\n\n")], 2)]);
        assert!(t.finish().contains("c_total{a=\"q\\\"b\\\\n\\n\"} 2\n"));
    }
}
