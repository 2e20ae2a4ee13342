//! `--metrics ADDR`: a Prometheus `/metrics` endpoint over plain HTTP on its own listener.
//!
//! Each scrape reads the layers' counters (the client's requests, retries and 429s, the media
//! layer's memory hits and misses, the disk store's bytes) and [`crate::metrics`]' instruments,
//! and writes them in the text format. Nothing is sent to RingCentral for it.

use std::sync::Arc;

use crate::api::Client;
use crate::media::Media;
use crate::metrics::{self, Text};
use crate::store::DiskStore;

/// What a scrape reads.
#[derive(Clone)]
pub struct Sources {
    pub client: Client,
    pub media: Arc<Media>,
    pub disk: Option<Arc<DiskStore>>,
}

/// Parses `--metrics`: `HOST:PORT`, or only a port (`9464`, `:9464`) for loopback.
pub fn parse_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| {
        format!("bad --metrics address {s:?} (use a port, or HOST:PORT such as 127.0.0.1:9464)")
    })
}

/// The exposition text of one scrape.
pub fn render(s: &Sources) -> String {
    let mut t = Text::default();
    let requests = metrics::requests();
    let samples: Vec<([(&str, &str); 2], u64)> = requests
        .iter()
        .map(|((g, o), n)| ([("group", *g), ("outcome", *o)], *n))
        .collect();
    let samples: Vec<(&[(&str, &str)], u64)> = samples.iter().map(|(l, n)| (&l[..], *n)).collect();
    t.counter(
        "ringfs_api_requests_total",
        "Requests sent to RingCentral, by rate group and outcome (retries included).",
        &samples,
    );
    let c = s.client.stats();
    t.counter(
        "ringfs_api_throttled_total",
        "429 answers received.",
        &[(&[], c.throttled)],
    );
    t.counter(
        "ringfs_api_retries_total",
        "Requests that were retries (of any cause).",
        &[(&[], c.retries)],
    );
    t.counter(
        "ringfs_api_logins_total",
        "JWT logins and refresh-token grants.",
        &[
            (&[("kind", "jwt")], c.logins),
            (&[("kind", "refresh")], c.refreshes),
        ],
    );
    t.counter(
        "ringfs_downloaded_bytes_total",
        "Recording bytes received from the media host.",
        &[(
            &[],
            metrics::BYTES_DOWNLOADED.load(std::sync::atomic::Ordering::Relaxed),
        )],
    );
    let m = s.media.stats();
    t.counter(
        "ringfs_cache_hits_total",
        "Reads answered from a cache tier: memory (at once), disk (bytes read into memory).",
        &[
            (&[("tier", "memory")], m.cache_hits),
            (&[("tier", "disk")], m.disk_reads),
        ],
    );
    t.counter(
        "ringfs_cache_misses_total",
        "Reads that waited for a download (memory); downloads from the media host (disk).",
        &[
            (&[("tier", "memory")], m.cache_misses),
            (&[("tier", "disk")], m.opens),
        ],
    );
    let ratio = |h: u64, miss: u64| {
        if h + miss == 0 {
            0.0
        } else {
            h as f64 / (h + miss) as f64
        }
    };
    t.gauge(
        "ringfs_cache_hit_ratio",
        "Hits over hits and misses since the mount started, per tier.",
        &[
            (&[("tier", "memory")], ratio(m.cache_hits, m.cache_misses)),
            (&[("tier", "disk")], ratio(m.disk_reads, m.opens)),
        ],
    );
    let mut bytes: Vec<(&[(&str, &str)], f64)> =
        vec![(&[("tier", "memory")], m.bytes_cached as f64)];
    if let Some(d) = &s.disk {
        bytes.push((&[("tier", "disk")], d.stats().bytes as f64));
    }
    t.gauge("ringfs_cache_bytes", "Bytes held now, per tier.", &bytes);
    t.histogram(
        "ringfs_media_first_byte_seconds",
        "From sending a media request to the first byte of its body.",
        &metrics::FIRST_BYTE,
    );
    t.histogram(
        "ringfs_media_download_seconds",
        "From sending a media request to the clean end of its body.",
        &metrics::DOWNLOAD_TIME,
    );
    t.finish()
}

/// Serves `/metrics` on `listener` until the runtime ends.
pub async fn serve(listener: tokio::net::TcpListener, sources: Sources) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let s = sources.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    render(&s),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!("metrics endpoint stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_alone_is_loopback() {
        assert_eq!(parse_addr("9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(parse_addr(":9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(parse_addr("0.0.0.0:1").unwrap().to_string(), "0.0.0.0:1");
        assert!(parse_addr("nowhere").is_err());
    }
}
