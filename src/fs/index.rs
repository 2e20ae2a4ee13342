//! What the mount knows about the account: call sessions, their recordings, and which dates have
//! been listed completely. Pure data, no I/O: the listing planner in [`super`] decides which
//! call-log request to send, this module records what came back.
//!
//! Coverage rule. A call-log query for `[from, to)` returns records newest first, 1000 a page.
//! After a page, every local date strictly newer than the date of the oldest record seen so far
//! (and not older than `from`) is complete; the oldest record's date may continue on the next page.
//! When a query has no next page, every date in `[from, to)` is complete.
//!
//! With a call index on disk the records are a cache of it: a date's records are here while the
//! date is in use and may be forgotten ([`Index::forget_date`]) once they are on disk, so what is
//! held does not grow with the window. What dates were listed (`listed`) is kept for every date.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use tokio::time::Instant;

use jiff::Timestamp;
use jiff::civil::Date;

use crate::catalog::Window;
use crate::model::{CallRecord, RecordingRef};

/// One call session: every call-log record that carries its `sessionId`.
#[derive(Debug, Clone)]
pub struct Session {
    pub session_id: String,
    /// The records, deduplicated by record id; `records[0]` is the earliest.
    pub records: Vec<CallRecord>,
}

impl Session {
    pub fn first(&self) -> &CallRecord {
        &self.records[0]
    }

    /// Every recording of the session, deduplicated by id, in order of first appearance.
    pub fn recordings(&self) -> Vec<&RecordingRef> {
        let mut seen = BTreeSet::new();
        self.records
            .iter()
            .flat_map(|r| r.recordings.iter())
            .filter(|rec| seen.insert(rec.id.as_str()))
            .collect()
    }
}

/// A recording the mount knows of.
#[derive(Debug, Clone)]
pub struct KnownRecording {
    pub id: String,
    pub content_uri: String,
    /// The session it belongs to, when it was found through the call log.
    pub session_id: Option<String>,
    pub start: Option<Timestamp>,
    pub duration: Option<u64>,
}

/// A call-log query whose pages are not all read yet, kept so that the next date asked for
/// continues it (one request, no overlap) instead of starting a new query.
#[derive(Debug, Clone)]
pub struct Cursor {
    pub from: Timestamp,
    pub to: Timestamp,
    pub next: String,
    /// Start time of the oldest record read so far.
    pub oldest: Timestamp,
    pub created: Instant,
}

#[derive(Debug, Default)]
pub struct Index {
    pub sessions: HashMap<String, Session>,
    pub recordings: HashMap<String, KnownRecording>,
    /// Sessions by the local date of their first record.
    pub by_date: BTreeMap<Date, BTreeSet<String>>,
    /// When each complete date was last listed.
    pub listed: HashMap<Date, Instant>,
    pub cursor: Option<Cursor>,
    /// When each date in `by_date` was last used, on the clock `uses` (for forgetting the least
    /// recently used first).
    used: HashMap<Date, u64>,
    uses: u64,
}

impl Index {
    /// Adds records (from any query), merging by session and record id.
    pub fn add_records(&mut self, records: Vec<CallRecord>, window: &Window) {
        for record in records {
            for rec in &record.recordings {
                self.recordings.insert(
                    rec.id.to_string(),
                    KnownRecording {
                        id: rec.id.to_string(),
                        content_uri: rec.content_uri.clone(),
                        session_id: Some(record.session_id.to_string()),
                        start: Some(record.start_time),
                        duration: Some(record.duration),
                    },
                );
            }
            let session_id = record.session_id.to_string();
            let session = self
                .sessions
                .entry(session_id.clone())
                .or_insert_with(|| Session {
                    session_id: session_id.clone(),
                    records: Vec::new(),
                });
            let old_date = session
                .records
                .first()
                .map(|r| window.date_of(r.start_time));
            match session.records.iter_mut().find(|r| r.id == record.id) {
                Some(existing) => *existing = record,
                None => session.records.push(record),
            }
            session
                .records
                .sort_by_key(|r| (r.start_time, r.id.clone()));
            let new_date = window.date_of(session.records[0].start_time);
            if let Some(old) = old_date.filter(|d| *d != new_date)
                && let Some(set) = self.by_date.get_mut(&old)
            {
                set.remove(&session_id);
                if set.is_empty() {
                    self.by_date.remove(&old);
                    self.used.remove(&old);
                }
            }
            self.by_date.entry(new_date).or_default().insert(session_id);
            self.touch(new_date);
        }
    }

    /// Notes that `date` is in use now.
    pub fn touch(&mut self, date: Date) {
        if self.by_date.contains_key(&date) {
            self.uses += 1;
            self.used.insert(date, self.uses);
        }
    }

    /// The dates whose sessions are held, least recently used first.
    pub fn dates_by_use(&self) -> Vec<Date> {
        let mut dates: Vec<(u64, Date)> = self.used.iter().map(|(d, u)| (*u, *d)).collect();
        dates.sort();
        dates.into_iter().map(|(_, d)| d).collect()
    }

    /// Forgets the sessions of `date` and the recordings found through them (what was listed
    /// is kept).
    pub fn forget_date(&mut self, date: Date) {
        self.used.remove(&date);
        for id in self.by_date.remove(&date).unwrap_or_default() {
            if let Some(s) = self.sessions.remove(&id) {
                for rec in s.recordings() {
                    self.recordings.remove(rec.id.as_str());
                }
            }
        }
    }

    /// The local date a known session is listed under.
    pub fn date_of_session(&self, id: &str, window: &Window) -> Option<Date> {
        let s = self.sessions.get(id)?;
        Some(window.date_of(s.first().start_time))
    }

    /// Marks the dates of `[from, to)` newer than `oldest_partial` (or all of them when the
    /// query is exhausted, `oldest_partial == None`) as listed at `at`; returns them.
    pub fn mark_listed(
        &mut self,
        window: &Window,
        from: Timestamp,
        to: Timestamp,
        oldest_partial: Option<Timestamp>,
        at: Instant,
    ) -> Vec<Date> {
        let first = window.date_of(from);
        // `to` is exclusive: a query ending exactly at midnight does not cover the next date.
        let last = window.date_of(
            to.checked_sub(jiff::SignedDuration::from_nanos(1))
                .unwrap_or(to),
        );
        let cut = oldest_partial.map(|t| window.date_of(t));
        let mut marked = Vec::new();
        let mut d = first;
        while d <= last {
            let whole_date_inside = window.date_range(d).0 >= from;
            if whole_date_inside && cut.is_none_or(|c| d > c) {
                self.listed.insert(d, at);
                marked.push(d);
            }
            match d.tomorrow() {
                Ok(next) => d = next,
                Err(_) => break,
            }
        }
        marked
    }

    pub fn sessions_on(&self, date: Date) -> impl Iterator<Item = &Session> {
        self.by_date
            .get(&date)
            .into_iter()
            .flat_map(|set| set.iter())
            .filter_map(|id| self.sessions.get(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Party;
    use jiff::civil::date;
    use jiff::tz::TimeZone;

    fn rec(id: &str, session: &str, start: &str, recording: &str) -> CallRecord {
        CallRecord {
            id: id.into(),
            session_id: session.into(),
            telephony_session_id: None,
            start_time: start.parse().unwrap(),
            duration: 60,
            inbound: true,
            from: Party::default(),
            to: Party::default(),
            recordings: vec![RecordingRef {
                id: recording.into(),
                content_uri: format!("http://m/{recording}"),
            }],
            raw: Default::default(),
        }
    }

    #[test]
    fn records_merge_by_session_and_id() {
        let w = Window::last_days(10, TimeZone::UTC);
        let mut ix = Index::default();
        ix.add_records(vec![rec("a", "s1", "2026-11-23T10:00:00Z", "r1")], &w);
        ix.add_records(
            vec![
                rec("a", "s1", "2026-11-23T10:00:00Z", "r1"),
                rec("b", "s1", "2026-11-23T10:00:05Z", "r2"),
            ],
            &w,
        );
        let s = &ix.sessions["s1"];
        assert_eq!(s.records.len(), 2);
        assert_eq!(s.recordings().len(), 2);
        assert_eq!(ix.sessions_on(date(2026, 11, 23)).count(), 1);
        assert_eq!(ix.recordings["r2"].session_id.as_deref(), Some("s1"));
    }

    #[test]
    fn forgetting_a_date_drops_its_sessions_and_recordings_least_recently_used_first() {
        let w = Window::last_days(10, TimeZone::UTC);
        let mut ix = Index::default();
        ix.add_records(vec![rec("a", "s1", "2026-11-22T10:00:00Z", "r1")], &w);
        ix.add_records(vec![rec("b", "s2", "2026-11-23T10:00:00Z", "r2")], &w);
        ix.touch(date(2026, 11, 22));
        assert_eq!(
            ix.dates_by_use(),
            vec![date(2026, 11, 23), date(2026, 11, 22)]
        );
        ix.forget_date(date(2026, 11, 23));
        assert!(!ix.sessions.contains_key("s2") && !ix.recordings.contains_key("r2"));
        assert!(ix.sessions.contains_key("s1") && ix.recordings.contains_key("r1"));
        assert_eq!(ix.dates_by_use(), vec![date(2026, 11, 22)]);
    }

    #[test]
    fn a_full_page_leaves_the_oldest_date_partial() {
        let w = Window::last_days(10, TimeZone::UTC);
        let mut ix = Index::default();
        let from: Timestamp = "2026-11-20T00:00:00Z".parse().unwrap();
        let to: Timestamp = "2026-11-24T00:00:00Z".parse().unwrap();
        let now = Instant::now();
        ix.mark_listed(
            &w,
            from,
            to,
            Some("2026-11-22T13:00:00Z".parse().unwrap()),
            now,
        );
        assert!(ix.listed.contains_key(&date(2026, 11, 23)));
        assert!(!ix.listed.contains_key(&date(2026, 11, 22)));
        assert!(!ix.listed.contains_key(&date(2026, 11, 21)));
        assert!(
            !ix.listed.contains_key(&date(2026, 11, 24)),
            "`to` is exclusive"
        );
        ix.mark_listed(&w, from, to, None, now);
        for d in 20..=23 {
            assert!(ix.listed.contains_key(&date(2026, 11, d)));
        }
    }

    #[test]
    fn a_query_starting_mid_date_does_not_complete_it() {
        let w = Window::last_days(10, TimeZone::UTC);
        let mut ix = Index::default();
        let from: Timestamp = "2026-11-20T12:00:00Z".parse().unwrap();
        let to: Timestamp = "2026-11-21T12:00:00Z".parse().unwrap();
        ix.mark_listed(&w, from, to, None, Instant::now());
        assert!(!ix.listed.contains_key(&date(2026, 11, 20)));
        assert!(
            ix.listed.contains_key(&date(2026, 11, 21)),
            "a query ending at now covers today so far"
        );
    }
}
