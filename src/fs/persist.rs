//! The call index on disk ([`MetaStore`]): filling the in-memory [`super::Index`] from it when a
//! mount starts, and writing to it what each call-log page brought.
//!
//! What a remount trusts. A span listed completely at `L` holds every call that started in it
//! and showed in the call log by `L`; calls show within `settle` of their start, so the span is
//! final up to `L - settle`. A date whose whole range is final (in the window's time zone of
//! this mount, which need not be the last one's: spans and start times are UTC) is listed when
//! the mount starts and never costs a request. A date that is not (today, or a date last listed
//! while it could still change) is brought up to date by the catch-up: one query from the newest
//! known record's start (or from `L - settle` of the last listing, when that is earlier: a long
//! call that started before the newest record shows only when it ends) to now, sent once per
//! mount when what was listed before plus that query
//! covers the date; every date they cover is then listed. After that, dates that may change are
//! listed again after `recent_ttl` as in any mount.
//!
//! Everything is loaded when the mount starts (the records of the retention window, each kept
//! once in memory as in any mount), not date by date: simple, and a by-session or by-recording
//! lookup of a known id then costs nothing either.

use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use jiff::civil::Date;

use super::plan::PagePlan;
use super::{CallLog, Fs, FsConfig, ScopeChoice, State};
use crate::api::Scope;
use crate::catalog::AudioKind;
use crate::media::Media;
use crate::model::CallRecord;
use crate::store::{MetaStore, Span, StoredCall};

/// Merged UTC spans: where every call is known.
#[derive(Debug, Default)]
pub(super) struct Coverage(Vec<(Timestamp, Timestamp)>);

impl Coverage {
    pub(super) fn add(&mut self, from: Timestamp, to: Timestamp) {
        if from >= to {
            return;
        }
        self.0.push((from, to));
        self.0.sort();
        let mut merged: Vec<(Timestamp, Timestamp)> = Vec::with_capacity(self.0.len());
        for (f, t) in self.0.drain(..) {
            match merged.last_mut() {
                Some(last) if f <= last.1 => last.1 = last.1.max(t),
                _ => merged.push((f, t)),
            }
        }
        self.0 = merged;
    }

    /// Whether `[from, to)` lies within one span.
    pub(super) fn covers(&self, from: Timestamp, to: Timestamp) -> bool {
        from >= to || self.0.iter().any(|&(f, t)| f <= from && to <= t)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn kind_named(name: &str) -> Option<AudioKind> {
    [AudioKind::Mp3, AudioKind::Wav]
        .into_iter()
        .find(|k| k.extension() == name)
}

fn scope_named(name: &str) -> Option<Scope> {
    [Scope::Account, Scope::Extension]
        .into_iter()
        .find(|s| s.name() == name)
}

fn stored(records: &[CallRecord]) -> Vec<StoredCall> {
    records
        .iter()
        .map(|r| StoredCall {
            id: r.id.to_string(),
            session_id: r.session_id.to_string(),
            start_ms: r.start_time.as_millisecond(),
            json: r.raw.to_string(),
        })
        .collect()
}

impl Fs {
    /// A core that keeps what it learns from the call log in `meta` and starts from what an
    /// earlier mount kept there (see the module docs). Blocking: reads the whole index; call it
    /// before serving.
    pub fn with_index(
        log: Arc<dyn CallLog>,
        media: Arc<Media>,
        config: FsConfig,
        meta: Arc<MetaStore>,
    ) -> Fs {
        let mut fs = Fs::new(log, media, config);
        let stored = meta.load();
        fs.meta = Some(meta);
        match stored {
            Ok(stored) => fs.load(stored),
            Err(e) => tracing::warn!("cannot read the call index (listing afresh): {e:#}"),
        }
        if let (Some(meta), Some(scope)) = (&fs.meta, fs.state().scope) {
            meta.set_fact("scope", scope.name());
        }
        fs
    }

    fn load(&self, stored: crate::store::Stored) {
        let Some(meta) = &self.meta else { return };
        let mut st = self.state();
        let stored_scope = stored.facts.get("scope").and_then(|s| scope_named(s));
        if let (ScopeChoice::Fixed(want), Some(had)) = (self.config.scope, stored_scope)
            && want != had
        {
            tracing::info!(
                "the call index holds the {} call log, not the {}: starting it afresh",
                had.name(),
                want.name()
            );
            meta.reset();
            return;
        }
        st.scope = st.scope.or(stored_scope);
        st.account_kind = stored.facts.get("format").and_then(|k| kind_named(k));
        let records: Vec<CallRecord> = stored
            .calls
            .iter()
            .filter_map(|json| serde_json::from_str(json).ok())
            .filter_map(|v| CallRecord::from_json(&v).ok())
            .collect();
        let count = records.len();
        let settle = self.config.settle.as_millis() as i64;
        // The catch-up starts at the newest known record, or earlier where the last listing was
        // not final yet: a long call that started before the newest record may have shown in
        // the call log only after that listing (calls show within `settle` of their start).
        let unsettled = stored
            .spans
            .iter()
            .map(|s| s.listed_at_ms.saturating_sub(settle))
            .max();
        st.catch_up = records
            .iter()
            .map(|r| r.start_time)
            .max()
            .map(|newest| unsettled.map_or(newest, |u| newest.min(ts(u))));
        st.index.add_records(records, &self.config.window);
        let mut settled = Coverage::default();
        for s in &stored.spans {
            st.coverage.add(ts(s.from_ms), ts(s.to_ms));
            settled.add(
                ts(s.from_ms),
                ts(s.to_ms.min(s.listed_at_ms.saturating_sub(settle))),
            );
        }
        let now = Timestamp::now();
        let (first, last) = self.config.window.bounds(now);
        let at = Instant::now();
        let mut listed = 0;
        for d in dates(first, last) {
            let (from, to) = self.config.window.date_range(d);
            if !self.is_recent(d, now) && settled.covers(from, to) {
                st.index.listed.insert(d, at);
                listed += 1;
            }
        }
        tracing::info!("call index: {count} records, {listed} settled dates listed before");
    }

    /// The catch-up query for listing `date`, if it is pending and, with what was listed
    /// before, covers `date` (see the module docs); a catch-up cut short by a full page is
    /// continued with `cursor`.
    pub(super) fn catch_up_plan(
        &self,
        st: &State,
        date: Date,
        cursor: Option<&super::index::Cursor>,
        now: Timestamp,
    ) -> Option<PagePlan> {
        let newest = st.catch_up?;
        if let Some(c) = cursor.filter(|c| c.from == newest) {
            return Some(PagePlan {
                from: c.from,
                to: c.to,
                next: Some(c.next.clone()),
            });
        }
        self.catch_up_covers(st, date, now).then_some(PagePlan {
            from: newest,
            to: now,
            next: None,
        })
    }

    /// Whether the pending catch-up, with what was listed before, covers `date` up to `now`.
    pub(super) fn catch_up_covers(&self, st: &State, date: Date, now: Timestamp) -> bool {
        let Some(newest) = st.catch_up else {
            return false;
        };
        let (from, to) = self.config.window.date_range(date);
        let to = to.min(now);
        // The part of the date before the catch-up's start must have been listed.
        st.coverage.covers(from, to.min(newest))
    }

    /// Takes note of a page: the dates it completed (`marked`) as spans, and, when it ended a
    /// catch-up, every date of the window now covered. Queues the page's records and spans for
    /// the index (one transaction).
    pub(super) fn after_page(
        &self,
        st: &mut State,
        plan: &PagePlan,
        calls: Vec<StoredCall>,
        mut marked: Vec<Date>,
        exhausted: bool,
        at: Instant,
    ) {
        let w = &self.config.window;
        if exhausted && st.catch_up == Some(plan.from) {
            st.catch_up = None;
            st.coverage.add(plan.from, plan.to);
            let (first, last) = w.bounds(plan.to);
            for d in dates(first, last) {
                let (from, to) = w.date_range(d);
                if !marked.contains(&d) && st.coverage.covers(from, to.min(plan.to)) {
                    st.index.listed.insert(d, at);
                    marked.push(d);
                }
            }
        }
        let listed_at_ms = Timestamp::now().as_millisecond();
        let spans: Vec<Span> = marked
            .iter()
            .map(|&d| {
                let (from, to) = w.date_range(d);
                let to = to.min(plan.to);
                st.coverage.add(from, to);
                Span {
                    from_ms: from.as_millisecond(),
                    to_ms: to.as_millisecond(),
                    listed_at_ms,
                }
            })
            .collect();
        if let Some(meta) = &self.meta {
            meta.record(calls, spans);
        }
    }

    /// The records of a page, as the index keeps them (empty without an index).
    pub(super) fn to_store(&self, records: &[CallRecord]) -> Vec<StoredCall> {
        if self.meta.is_some() {
            stored(records)
        } else {
            Vec::new()
        }
    }

    /// Keeps records found outside a listing (a by-session lookup): no span is complete.
    pub(super) fn keep_records(&self, records: &[CallRecord]) {
        if let Some(meta) = &self.meta {
            meta.record(stored(records), Vec::new());
        }
    }

    pub(super) fn keep_fact(&self, key: &str, value: &str) {
        if let Some(meta) = &self.meta {
            meta.set_fact(key, value);
        }
    }

    /// Whether `date` was listed before (by this mount or one before it), so that while the API
    /// is down it lists from what is known.
    pub(super) fn listed_before(&self, st: &State, date: Date) -> bool {
        let (from, _) = self.config.window.date_range(date);
        st.coverage
            .covers(from, from + jiff::SignedDuration::from_millis(1))
    }
}

/// `first ..= last`.
fn dates(first: Date, last: Date) -> impl Iterator<Item = Date> {
    std::iter::successors(Some(first), |d| d.tomorrow().ok()).take_while(move |d| *d <= last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn coverage_merges_touching_spans() {
        let mut c = Coverage::default();
        c.add(t("2026-11-20T00:00:00Z"), t("2026-11-21T00:00:00Z"));
        c.add(t("2026-11-22T00:00:00Z"), t("2026-11-23T00:00:00Z"));
        assert!(!c.covers(t("2026-11-20T12:00:00Z"), t("2026-11-22T12:00:00Z")));
        c.add(t("2026-11-21T00:00:00Z"), t("2026-11-22T00:00:00Z"));
        assert!(c.covers(t("2026-11-20T00:00:00Z"), t("2026-11-23T00:00:00Z")));
        assert!(!c.covers(t("2026-11-19T23:00:00Z"), t("2026-11-20T01:00:00Z")));
        assert_eq!(c.0.len(), 1);
    }
}
