//! The call index on disk ([`MetaStore`]): filling the in-memory [`super::Index`] from it date by
//! date, as dates are used, and writing to it what each call-log page brought.
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
//! What is in memory. The mount starts with the spans and facts only. A date's records are read
//! (one query by UTC start range) when the date is first needed: listed, or a session or file
//! in it looked up; a session or recording asked for by id is found through the index by id, its
//! date read with it. All of these are blocking reads, run with `spawn_blocking`, never with
//! the state locked. At most `dates_in_memory` dates are held: beyond that the least recently
//! used one is forgotten, if it is settled, listed and written (reading it again costs no
//! request); dates that may still change stay. A 90-day window of a call centre is 100,000
//! calls; held all at once they cost about 1 GB. Inode numbers are kept for every
//! node seen, so a file of a forgotten date keeps its number, and `getattr` reads the date again.

use std::sync::Arc;
use tokio::time::Instant;

use jiff::Timestamp;
use jiff::civil::Date;

use super::node::Node;

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
            json: r.raw.as_str().to_owned(),
            recordings: r.recordings.iter().map(|x| x.id.to_string()).collect(),
        })
        .collect()
}

fn parse(json: &[String]) -> Vec<CallRecord> {
    json.iter()
        .filter_map(|j| serde_json::from_str(j).ok())
        .filter_map(|v| CallRecord::from_json(&v).ok())
        .collect()
}

impl Fs {
    /// A core that keeps what it learns from the call log in `meta` and starts from what an
    /// earlier mount kept there (see the module docs). Blocking: reads the spans and facts; call
    /// it before serving.
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
        let count = stored.count;
        let settle = self.config.settle.as_millis() as i64;
        // The catch-up starts at the newest known record, or earlier where the last listing was
        // not final yet: a long call that started before the newest record may have shown in
        // the call log only after that listing (calls show within `settle` of their start).
        let unsettled = stored
            .spans
            .iter()
            .map(|s| s.listed_at_ms.saturating_sub(settle))
            .max();
        st.catch_up = stored
            .newest_ms
            .map(|newest| unsettled.map_or(ts(newest), |u| ts(newest.min(u))));
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
            let dates = self.dates_of(st, &calls);
            let n = meta.record(calls, spans);
            st.unwritten.extend(dates.into_iter().map(|d| (d, n)));
        }
    }

    /// The dates the sessions of `calls` are listed under.
    fn dates_of(&self, st: &State, calls: &[StoredCall]) -> Vec<Date> {
        let w = &self.config.window;
        let mut out: Vec<Date> = calls
            .iter()
            .flat_map(|c| {
                [
                    Some(w.date_of(ts(c.start_ms))),
                    st.index.date_of_session(&c.session_id, w),
                ]
            })
            .flatten()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The records of a page, as the index keeps them (empty without an index).
    pub(super) fn to_store(&self, records: &[CallRecord]) -> Vec<StoredCall> {
        if self.meta.is_some() {
            stored(records)
        } else {
            Vec::new()
        }
    }

    /// Takes in and keeps records found outside a listing (a by-session lookup): no span is
    /// complete.
    pub(super) fn keep_records(&self, records: Vec<CallRecord>) {
        let calls = self.to_store(&records);
        let mut st = self.state();
        st.index.add_records(records, &self.config.window);
        if let Some(meta) = &self.meta {
            let dates = self.dates_of(&st, &calls);
            let n = meta.record(calls, Vec::new());
            st.unwritten.extend(dates.into_iter().map(|d| (d, n)));
        }
    }

    /// Runs `read`, a blocking read of the call index, off the async workers; the default
    /// without an index or when the read fails.
    async fn read_index<T: Default + Send + 'static>(
        &self,
        read: impl FnOnce(&MetaStore) -> anyhow::Result<T> + Send + 'static,
    ) -> T {
        let Some(meta) = self.meta.clone() else {
            return T::default();
        };
        match tokio::task::spawn_blocking(move || read(&meta)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!("cannot read the call index: {e:#}");
                T::default()
            }
            Err(e) => {
                tracing::warn!("cannot read the call index: {e}");
                T::default()
            }
        }
    }

    /// [`Fs::read_index`] of records, parsed in the blocking task too.
    async fn read_stored(
        &self,
        read: impl FnOnce(&MetaStore) -> anyhow::Result<Vec<String>> + Send + 'static,
    ) -> Vec<CallRecord> {
        self.read_index(move |m| read(m).map(|json| parse(&json)))
            .await
    }

    /// The ids of the sessions with a recording and of the recordings the call index holds
    /// (empty without one): `by-session` and `by-recording` list them with those in memory.
    pub(super) async fn stored_ids(&self) -> (Vec<String>, Vec<String>) {
        self.read_index(MetaStore::ids).await
    }

    /// Adds records read from the call index, keeping the ones already held (they are as new).
    fn add_stored(&self, st: &mut State, records: Vec<CallRecord>) {
        let fresh = records
            .into_iter()
            .filter(|r| {
                st.index
                    .sessions
                    .get(r.session_id.as_str())
                    .is_none_or(|s| s.records.iter().all(|x| x.id != r.id))
            })
            .collect();
        st.index.add_records(fresh, &self.config.window);
    }

    /// Makes sure the records the call index holds for `date` are in memory, then forgets the
    /// least recently used dates beyond `dates_in_memory` (never `date`).
    pub(super) async fn load_date(&self, date: Date) {
        if self.meta.is_none() {
            return;
        }
        {
            let mut st = self.state();
            if st.loaded.contains(&date) {
                st.index.touch(date);
                return;
            }
        }
        let (from, to) = self.config.window.date_range(date);
        let (from, to) = (from.as_millisecond(), to.as_millisecond());
        let records = self.read_stored(move |m| m.calls_between(from, to)).await;
        let mut st = self.state();
        self.add_stored(&mut st, records);
        st.loaded.insert(date);
        st.index.touch(date);
        self.evict(&mut st, date);
    }

    /// Forgets the least recently used dates while more than `dates_in_memory` are held, of
    /// those that can be read again for nothing: listed, settled, written. Never `keep`.
    pub(super) fn evict(&self, st: &mut State, keep: Date) {
        let Some(meta) = &self.meta else { return };
        let max = self.config.dates_in_memory;
        if st.index.by_date.len() <= max {
            return;
        }
        let now = Timestamp::now();
        let written = meta.written();
        st.unwritten.retain(|_, n| *n > written);
        let mut excess = st.index.by_date.len() - max;
        let mut forgot = false;
        for d in st.index.dates_by_use() {
            if excess == 0 {
                break;
            }
            if d != keep
                && st.index.listed.contains_key(&d)
                && !self.is_recent(d, now)
                && !st.unwritten.contains_key(&d)
            {
                st.index.forget_date(d);
                st.loaded.remove(&d);
                excess -= 1;
                forgot = true;
            }
        }
        if forgot {
            give_back_freed_memory();
        }
    }

    /// Brings into memory what `node` needs, from the call index, if it was forgotten.
    pub(super) async fn hold(&self, node: &Node) {
        match node {
            Node::SessionDir { session, .. } | Node::CallJson { session, .. } => {
                self.hold_session(session).await;
            }
            Node::RecFile { id, .. } | Node::ByRecFile(id) => self.hold_recording(id).await,
            Node::CallsCsv(date) => self.load_date(*date).await,
            Node::Root | Node::Date(_) | Node::BySession | Node::ByRecording => {}
        }
    }

    /// Makes sure session `id` is in memory if the call index holds it: its date is read.
    pub(super) async fn hold_session(&self, id: &str) {
        let w = &self.config.window;
        {
            let mut st = self.state();
            if let Some(d) = st.index.date_of_session(id, w) {
                st.index.touch(d);
                return;
            }
        }
        let owned = id.to_string();
        let records = self.read_stored(move |m| m.session_calls(&owned)).await;
        let Some(first) = records.iter().map(|r| r.start_time).min() else {
            return;
        };
        let date = w.date_of(first);
        self.load_date(date).await;
        // Records of the session on later dates are not in its date's range.
        let mut st = self.state();
        self.add_stored(&mut st, records);
    }

    /// Makes sure recording `id` is in memory if the call index holds a call carrying it.
    pub(super) async fn hold_recording(&self, id: &str) {
        let known = self
            .state()
            .index
            .recordings
            .get(id)
            .map(|r| r.session_id.clone());
        if let Some(session) = known {
            if let Some(s) = session {
                self.hold_session(&s).await;
            }
            return;
        }
        let owned = id.to_string();
        let records = self.read_stored(move |m| m.recording_calls(&owned)).await;
        if let Some(r) = records.first() {
            self.hold_session(r.session_id.as_str()).await;
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

/// Returns the heap's free pages to the system (glibc's `malloc_trim`). A forgotten date frees
/// thousands of small allocations among ones that stay (the inodes, the dates still held), and
/// glibc keeps such holes resident: over a walk of a 90-day window of 100,000 calls, which
/// reads every date in and out again, RSS grew with the window although what is held does not.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
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
