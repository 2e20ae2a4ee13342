//! The call log through the bucket: read from the date manifests ([`BucketLog`], a reader's
//! whole call log), and published to them ([`PublishingLog`], a publisher's wrapper around the
//! RingCentral client).
//!
//! Manifests are per UTC date, whatever zone a mount shows its dates in: [`BucketLog`] answers
//! a query `[from, to)` with the records of every UTC date it overlaps that start inside it, in
//! one page. [`PublishingLog`] passes every query through to RingCentral and keeps the records
//! and the spans it listed completely (a query read to its last page); once the spans cover a
//! whole UTC date (today: up to the time it was listed), that date's records are published, and again when a re-listing found new
//! ones or when the date was listed after it settled (then final). A query whose dates are all
//! final in the bucket is answered from it without a request.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp};

use super::{Bucket, BucketError, Manifest};
use crate::api::{ApiError, Priority, Scope};
use crate::catalog::Window;
use crate::fs::{CallLog, Page};
use crate::media::BoxFuture;
use crate::model::{CallRecord, RecordingMeta};

/// Tries of one manifest PUT before it is given up (see `PublishingLog::publish`).
const MANIFEST_ATTEMPTS: u32 = 14;

/// Manifests fetched at once when a query spans many dates.
const PARALLEL: usize = 8;

/// The UTC dates a span `[from, to)` overlaps, oldest first.
fn utc_dates(from: Timestamp, to: Timestamp) -> Vec<Date> {
    let utc = Window::last_days(1, jiff::tz::TimeZone::UTC);
    if to <= from {
        return Vec::new();
    }
    let last = utc.date_of(to - SignedDuration::from_nanos(1));
    let mut d = utc.date_of(from);
    let mut out = Vec::new();
    while d <= last {
        out.push(d);
        match d.tomorrow() {
            Ok(n) => d = n,
            Err(_) => break,
        }
    }
    out
}

fn utc_range(d: Date) -> (Timestamp, Timestamp) {
    Window::last_days(1, jiff::tz::TimeZone::UTC).date_range(d)
}

fn utc_date_of(t: Timestamp) -> Date {
    Window::last_days(1, jiff::tz::TimeZone::UTC).date_of(t)
}

/// A bucket failure as the core sees API failures: one it could not reach is "unreachable"
/// (the core then serves what it holds and probes), a missing object is a 404.
fn api_error(e: BucketError) -> ApiError {
    match e {
        BucketError::NotFound(context) => ApiError::Service {
            status: 404,
            error_code: None,
            message: "not in the bucket".into(),
            context,
        },
        BucketError::Failed { context, message } => ApiError::Timeout {
            context: format!("{context}: {message}"),
            what: "reaching the bucket",
        },
        BucketError::Invalid(detail) => ApiError::Decode {
            context: "bucket".into(),
            detail,
        },
    }
}

/// A reader's call log: the manifests. See the module docs.
pub struct BucketLog {
    bucket: Arc<Bucket>,
    /// Final manifests never change: kept once read.
    finals: Mutex<HashMap<Date, Arc<Vec<CallRecord>>>>,
}

impl BucketLog {
    pub fn new(bucket: Arc<Bucket>) -> BucketLog {
        BucketLog {
            bucket,
            finals: Mutex::new(HashMap::new()),
        }
    }

    /// The records of one UTC date (none when no manifest was published).
    async fn date(&self, d: Date) -> Result<Arc<Vec<CallRecord>>, ApiError> {
        if let Some(r) = self.finals.lock().unwrap().get(&d) {
            return Ok(r.clone());
        }
        let m = self
            .bucket
            .manifest(&d.to_string())
            .await
            .map_err(api_error)?;
        let Some(m) = m else {
            return Ok(Arc::new(Vec::new()));
        };
        let records: Vec<CallRecord> = m
            .records
            .iter()
            .filter_map(|raw| CallRecord::from_json(raw).ok())
            .collect();
        let records = Arc::new(records);
        if m.is_final {
            self.finals.lock().unwrap().insert(d, records.clone());
        }
        Ok(records)
    }

    async fn dates(&self, dates: Vec<Date>) -> Result<Vec<CallRecord>, ApiError> {
        let mut results = futures_util::stream::iter(dates)
            .map(|d| self.date(d))
            .buffered(PARALLEL);
        let mut out = Vec::new();
        while let Some(r) = results.next().await {
            out.extend(r?.iter().cloned());
        }
        Ok(out)
    }

    async fn span(&self, from: Timestamp, to: Timestamp) -> Result<Page, ApiError> {
        let mut records: Vec<CallRecord> = self
            .dates(utc_dates(from, to))
            .await?
            .into_iter()
            .filter(|r| from <= r.start_time && r.start_time < to)
            .collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.start_time));
        Ok(Page {
            records,
            next: None,
        })
    }
}

impl CallLog for BucketLog {
    fn page(
        &self,
        _scope: Scope,
        from: Timestamp,
        to: Timestamp,
        _next: Option<String>,
        _prio: Priority,
    ) -> BoxFuture<'_, Result<Page, ApiError>> {
        // Every query is answered in one page, so `next` is never asked for.
        Box::pin(self.span(from, to))
    }

    fn find_session<'a>(
        &'a self,
        _scope: Scope,
        session_id: &'a str,
        since: Timestamp,
        _prio: Priority,
    ) -> BoxFuture<'a, Result<Vec<CallRecord>, ApiError>> {
        Box::pin(async move {
            let dates = utc_dates(since, Timestamp::now() + SignedDuration::from_hours(24));
            Ok(self
                .dates(dates)
                .await?
                .into_iter()
                .filter(|r| r.session_id.as_str() == session_id)
                .collect())
        })
    }

    fn recording_meta<'a>(
        &'a self,
        id: &'a str,
        _prio: Priority,
    ) -> BoxFuture<'a, Result<RecordingMeta, ApiError>> {
        Box::pin(async move {
            let held = self
                .bucket
                .find(id)
                .await
                .map_err(api_error)?
                .ok_or_else(|| {
                    api_error(BucketError::NotFound(format!("recording {id} metadata")))
                })?;
            Ok(RecordingMeta {
                id: id.to_string().into(),
                content_uri: self.content_url(id),
                content_type: Some(held.content_type),
                duration: None,
            })
        })
    }

    fn recording_content_url(&self, id: &str) -> Option<String> {
        Some(self.content_url(id))
    }
}

impl BucketLog {
    /// What a reader's records say the content is at: the bucket (the media source reads the
    /// object named by the recording id; the URL is only shown).
    fn content_url(&self, id: &str) -> String {
        format!("{}/{}/recordings/{id}", self.bucket.url(), super::LAYOUT)
    }
}

/// A query being read page by page.
#[derive(Clone, Copy)]
struct Chain {
    from: Timestamp,
    to: Timestamp,
    /// When its first page was asked for.
    started: Timestamp,
}

/// Disjoint sorted spans.
#[derive(Default)]
struct Spans(Vec<(Timestamp, Timestamp)>);

impl Spans {
    fn add(&mut self, a: Timestamp, b: Timestamp) {
        if a >= b {
            return;
        }
        self.0.push((a, b));
        self.0.sort();
        let mut out: Vec<(Timestamp, Timestamp)> = Vec::with_capacity(self.0.len());
        for (s, e) in self.0.drain(..) {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        self.0 = out;
    }

    fn contains(&self, a: Timestamp, b: Timestamp) -> bool {
        self.0.iter().any(|(s, e)| *s <= a && b <= *e)
    }
}

#[derive(Default)]
struct PubState {
    /// Queries not read to their end, by the cursor of their next page.
    chains: HashMap<String, Chain>,
    /// What was listed completely, and what was listed after it settled.
    covered: Spans,
    settled: Spans,
    /// Every record seen of the dates not final yet, per UTC date, by record id (a final
    /// date's records are dropped once its manifest is made, so this holds the recent dates
    /// and those not listed completely yet).
    records: HashMap<Date, BTreeMap<String, (Timestamp, serde_json::Value)>>,
    /// What was last published per date: (records, final).
    published: HashMap<Date, (usize, bool)>,
    /// Dates final in the bucket (nobody writes them again).
    finals: HashSet<Date>,
}

/// A publisher's call log: RingCentral's, publishing what it lists. See the module docs.
pub struct PublishingLog {
    inner: Arc<dyn CallLog>,
    bucket: Arc<Bucket>,
    reader: BucketLog,
    settle: Duration,
    state: Arc<Mutex<PubState>>,
}

impl PublishingLog {
    /// Wraps `inner`; `settle` is the core's (how long after a date calls may still appear).
    /// Reads which dates are final in the bucket (one LIST), so a query over them spends no
    /// request.
    pub async fn new(inner: Arc<dyn CallLog>, bucket: Arc<Bucket>, settle: Duration) -> Self {
        let mut state = PubState::default();
        match bucket.final_dates().await {
            Ok(dates) => state.finals = dates.iter().filter_map(|d| d.parse().ok()).collect(),
            Err(e) => tracing::warn!("listing the bucket's dates: {e}"),
        }
        PublishingLog {
            inner,
            reader: BucketLog::new(bucket.clone()),
            bucket,
            settle,
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Takes in one page of a query and returns the manifests it completed.
    fn took(&self, chain: Chain, page: &Page) -> Vec<Manifest> {
        let mut s = self.state.lock().unwrap();
        for r in &page.records {
            let d = utc_date_of(r.start_time);
            if s.finals.contains(&d) {
                continue; // published for good: nothing to keep
            }
            s.records
                .entry(d)
                .or_default()
                .insert(r.id.clone(), (r.start_time, r.raw.value()));
        }
        if let Some(next) = &page.next {
            if s.chains.len() > 1000 {
                s.chains.clear(); // queries the core gave up on
            }
            s.chains.insert(next.clone(), chain);
            return Vec::new();
        }
        s.covered.add(chain.from, chain.to);
        let settled_until =
            chain.started - SignedDuration::try_from(self.settle).unwrap_or_default();
        s.settled.add(chain.from, chain.to.min(settled_until));
        let mut out = Vec::new();
        // A query that reaches the present (the core ends today's at "now") covers today up to
        // then: today's manifest holds what was listed up to that time.
        let reaches_now = chain.to >= chain.started - SignedDuration::from_secs(60);
        for d in utc_dates(chain.from, chain.to) {
            let (a, b) = utc_range(d);
            let end = if reaches_now { b.min(chain.to) } else { b };
            if s.finals.contains(&d) || !s.covered.contains(a, end) {
                continue;
            }
            let is_final = s.settled.contains(a, b);
            let mut list: Vec<(Timestamp, serde_json::Value)> = s
                .records
                .get(&d)
                .map(|r| r.values().cloned().collect())
                .unwrap_or_default();
            let n = list.len();
            if s.published.get(&d) == Some(&(n, is_final)) {
                continue;
            }
            list.sort_by_key(|x| std::cmp::Reverse(x.0));
            // Marked now so that a second listing meanwhile does not publish it twice; undone if
            // the PUT fails (the next listing then tries again).
            s.published.insert(d, (n, is_final));
            if is_final {
                // Its records are in the manifest now; only dates that may change stay here.
                s.finals.insert(d);
                s.records.remove(&d);
            }
            out.push(Manifest {
                version: 1,
                date: d.to_string(),
                is_final,
                listed_at: chain.started.to_string(),
                records: list.into_iter().map(|(_, v)| v).collect(),
            });
        }
        out
    }

    fn publish(&self, manifests: Vec<Manifest>) {
        if manifests.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (bucket, state) = (self.bucket.clone(), self.state.clone());
        rt.spawn(async move {
            for m in manifests {
                // A settled date is not listed again by this mount: its manifest is retried
                // here (1 s, doubling up to a minute, for about ten minutes) rather than lost.
                let mut delay = Duration::from_secs(1);
                let mut attempt = 0;
                loop {
                    match bucket.put_manifest(&m).await {
                        Ok(()) => break,
                        Err(e) if attempt < MANIFEST_ATTEMPTS => {
                            if attempt == 0 {
                                tracing::warn!(
                                    "publishing the manifest of {}: {e}; trying again",
                                    m.date
                                );
                            }
                            attempt += 1;
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(60));
                        }
                        Err(e) => {
                            tracing::warn!("publishing the manifest of {}: {e}; giving up", m.date);
                            if let Ok(d) = m.date.parse::<Date>() {
                                let mut s = state.lock().unwrap();
                                s.published.remove(&d);
                                if m.is_final {
                                    s.finals.remove(&d);
                                }
                            }
                            break;
                        }
                    }
                }
            }
        });
    }

    /// Whether every UTC date of `[from, to)` is final in the bucket.
    fn all_final(&self, from: Timestamp, to: Timestamp) -> bool {
        let s = self.state.lock().unwrap();
        let dates = utc_dates(from, to);
        !dates.is_empty() && dates.iter().all(|d| s.finals.contains(d))
    }
}

impl CallLog for PublishingLog {
    fn page(
        &self,
        scope: Scope,
        from: Timestamp,
        to: Timestamp,
        next: Option<String>,
        prio: Priority,
    ) -> BoxFuture<'_, Result<Page, ApiError>> {
        Box::pin(async move {
            if next.is_none() && self.all_final(from, to) {
                match self.reader.span(from, to).await {
                    Ok(page) => return Ok(page),
                    Err(e) => tracing::debug!("reading manifests: {e}; asking RingCentral"),
                }
            }
            let chain = next
                .as_ref()
                .and_then(|n| self.state.lock().unwrap().chains.remove(n))
                .unwrap_or(Chain {
                    from,
                    to,
                    started: Timestamp::now(),
                });
            let page = self.inner.page(scope, from, to, next, prio).await?;
            let manifests = self.took(chain, &page);
            self.publish(manifests);
            Ok(page)
        })
    }

    fn find_session<'a>(
        &'a self,
        scope: Scope,
        session_id: &'a str,
        since: Timestamp,
        prio: Priority,
    ) -> BoxFuture<'a, Result<Vec<CallRecord>, ApiError>> {
        self.inner.find_session(scope, session_id, since, prio)
    }

    fn recording_meta<'a>(
        &'a self,
        id: &'a str,
        prio: Priority,
    ) -> BoxFuture<'a, Result<RecordingMeta, ApiError>> {
        self.inner.recording_meta(id, prio)
    }

    fn recording_content_url(&self, id: &str) -> Option<String> {
        self.inner.recording_content_url(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn spans_merge_and_cover() {
        let mut s = Spans::default();
        s.add(t("2026-11-01T00:00:00Z"), t("2026-11-01T12:00:00Z"));
        assert!(!s.contains(t("2026-11-01T00:00:00Z"), t("2026-11-02T00:00:00Z")));
        s.add(t("2026-11-01T12:00:00Z"), t("2026-11-02T03:00:00Z"));
        assert!(s.contains(t("2026-11-01T00:00:00Z"), t("2026-11-02T00:00:00Z")));
        assert_eq!(s.0.len(), 1);
    }

    #[test]
    fn dates_of_a_span() {
        let d = utc_dates(t("2026-11-01T23:00:00Z"), t("2026-11-03T00:00:00Z"));
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].to_string(), "2026-11-01");
        assert!(utc_dates(t("2026-11-01T00:00:00Z"), t("2026-11-01T00:00:00Z")).is_empty());
    }
}
