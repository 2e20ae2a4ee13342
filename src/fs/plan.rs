//! The listing planner: which span of dates one call-log query covers.
//!
//! A pure function of what is already listed, the density of calls and the pending cursor (the
//! rules are in the docs of [`super`], "What listing costs"); the clocks that decide whether a
//! listing or a cursor is still fresh stay with the caller, so every decision here is a table
//! test.

use jiff::Timestamp;
use jiff::civil::Date;

use super::index::Cursor;
use crate::catalog::Window;

/// A span reaches forward while it is expected to hold fewer records than this (half a page, so
/// a wrong density estimate still leaves the asked date on the first page most of the time).
const FORWARD_BUDGET: f64 = 500.0;

/// Calls per second over everything listed so far, for reaching forward.
///
/// Every page adds what it covered: its records and the stretch of time they were all the
/// records of (from the end of the span, or the previous page's oldest record, down to this
/// page's oldest record, or to the span's start once the query is exhausted). One date is a poor
/// sample (a weekend, the morning before an account's first call), and an estimate that is too
/// low makes the next span overflow a page; summing over every page corrects it with the next
/// listing instead of keeping the first guess for the life of the mount.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Density {
    records: u64,
    secs: f64,
}

impl Density {
    /// Adds one page: `records` records over `secs` seconds.
    pub fn observe(&mut self, records: usize, secs: f64) {
        self.records += records as u64;
        self.secs += secs.max(0.0);
    }

    /// The estimate, once a page was seen. An empty stretch counts as one record so it never
    /// reaches forward over the whole window on no evidence; a stretch under a minute counts as
    /// a minute.
    pub fn per_sec(&self) -> Option<f64> {
        (self.secs > 0.0 || self.records > 0)
            .then(|| self.records.max(1) as f64 / self.secs.max(60.0))
    }
}

/// One call-log request: `[from, to)`, continuing `next` when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagePlan {
    pub from: Timestamp,
    pub to: Timestamp,
    pub next: Option<String>,
}

/// The next request for listing `date`: continue `cursor` when `date` is the next date it would
/// reach, or start a span that ends with `date`, reaches back over the unlisted dates before it
/// and, once `density` (calls per second) is known, forward over unlisted dates while the
/// expected count stays under half a page.
///
/// `listed(d)` tells whether date `d` is listed and still fresh; `cursor` is the pending query,
/// passed only while it is fresh enough to continue; `now` bounds the window and the span's end.
pub fn plan_page(
    date: Date,
    listed: impl Fn(Date) -> bool,
    window: &Window,
    density: Option<f64>,
    cursor: Option<&Cursor>,
    now: Timestamp,
) -> PagePlan {
    let w = window;
    let (date_start, date_end) = w.date_range(date);
    if let Some(c) = cursor {
        // The cursor covers `date` if `date` lies in its span at or below its oldest record, and
        // every date between is already listed: otherwise its next pages would first go through
        // unlisted dates, while a new span puts `date` on the first page.
        let oldest = w.date_of(c.oldest);
        let reaches = c.from <= date_start && date <= oldest;
        let mut between = std::iter::successors(date.tomorrow().ok(), |d| d.tomorrow().ok())
            .take_while(|d| *d < oldest);
        if reaches && between.all(&listed) {
            return PagePlan {
                from: c.from,
                to: c.to,
                next: Some(c.next.clone()),
            };
        }
    }
    // A new span: back from `date` over unlisted dates in the window...
    let (window_first, window_last) = w.bounds(now);
    let mut first = date;
    while let Ok(prev) = first.yesterday() {
        if prev < window_first || listed(prev) {
            break;
        }
        first = prev;
    }
    // ...and forward while the expected count stays small.
    let mut last = date;
    if let Some(density) = density {
        let mut expected = density * (date_end.duration_since(w.date_range(first).0).as_secs_f64());
        while let Ok(next) = last.tomorrow() {
            if next > window_last || listed(next) {
                break;
            }
            let (s, e) = w.date_range(next);
            expected += density * e.duration_since(s).as_secs_f64();
            if expected > FORWARD_BUDGET {
                break;
            }
            last = next;
        }
    }
    let from = w.date_range(first).0;
    let to = w.date_range(last).1.min(now);
    PagePlan {
        from,
        to,
        next: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;
    use jiff::tz::TimeZone;
    use tokio::time::Instant;

    /// Midnight UTC of 2026-11-`day`.
    fn midnight(day: i8) -> Timestamp {
        date(2026, 11, day)
            .to_zoned_datetime(TimeZone::UTC)
            .unwrap()
            .timestamp()
    }

    fn cursor(from: i8, to: i8, oldest: &str) -> Cursor {
        Cursor {
            from: midnight(from),
            to: midnight(to),
            next: "page-2".into(),
            oldest: oldest.parse().unwrap(),
            created: Instant::now(),
        }
    }

    /// Calls per second that make `per_day` calls a day.
    fn per_day(n: f64) -> Option<f64> {
        Some(n / 86_400.0)
    }

    #[test]
    fn table() {
        // Ten dates, 2026-11-16 ..= 2026-11-25 (today), now 10:00 UTC.
        let window = Window::last_days(10, TimeZone::UTC);
        let now: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        struct Row {
            what: &'static str,
            date: i8,
            listed: &'static [i8],
            density: Option<f64>,
            cursor: Option<Cursor>,
            want: (Timestamp, Timestamp, Option<&'static str>),
        }
        let rows = [
            Row {
                what: "first listing reaches back to the window's first date",
                date: 20,
                listed: &[],
                density: None,
                cursor: None,
                want: (midnight(16), midnight(21), None),
            },
            Row {
                what: "a listed neighbour stops the span going back",
                date: 20,
                listed: &[18],
                density: None,
                cursor: None,
                want: (midnight(19), midnight(21), None),
            },
            Row {
                what: "the window's first date lists only itself",
                date: 16,
                listed: &[],
                density: None,
                cursor: None,
                want: (midnight(16), midnight(17), None),
            },
            Row {
                what: "a known density reaches forward while under half a page (120 a day: 4 dates)",
                date: 20,
                listed: &[19],
                density: per_day(120.0),
                cursor: None,
                want: (midnight(20), midnight(24), None),
            },
            Row {
                what: "reaching forward stops at a listed date",
                date: 20,
                listed: &[19, 22],
                density: per_day(120.0),
                cursor: None,
                want: (midnight(20), midnight(22), None),
            },
            Row {
                what: "a dense account does not reach forward",
                date: 20,
                listed: &[19],
                density: per_day(600.0),
                cursor: None,
                want: (midnight(20), midnight(21), None),
            },
            Row {
                what: "the dates reached back count against the forward budget",
                date: 20,
                listed: &[],
                density: per_day(120.0),
                cursor: None,
                want: (midnight(16), midnight(21), None),
            },
            Row {
                what: "today ends the span at now",
                date: 25,
                listed: &[24],
                density: None,
                cursor: None,
                want: (midnight(25), "2026-11-25T10:00:00Z".parse().unwrap(), None),
            },
            Row {
                what: "reaching forward into today ends at now, never past the window",
                date: 23,
                listed: &[22],
                density: per_day(10.0),
                cursor: None,
                want: (midnight(23), "2026-11-25T10:00:00Z".parse().unwrap(), None),
            },
            Row {
                what: "the date of the cursor's oldest record continues the cursor",
                date: 19,
                listed: &[20],
                density: per_day(2000.0),
                cursor: Some(cursor(16, 21, "2026-11-19T12:00:00Z")),
                want: (midnight(16), midnight(21), Some("page-2")),
            },
            Row {
                what: "an older date continues the cursor when every date between is listed",
                date: 17,
                listed: &[18, 20],
                density: per_day(2000.0),
                cursor: Some(cursor(16, 21, "2026-11-19T12:00:00Z")),
                want: (midnight(16), midnight(21), Some("page-2")),
            },
            Row {
                what: "an unlisted date between makes a new span instead",
                date: 17,
                listed: &[20],
                density: per_day(2000.0),
                cursor: Some(cursor(16, 21, "2026-11-19T12:00:00Z")),
                want: (midnight(16), midnight(18), None),
            },
            Row {
                what: "a date newer than the cursor's oldest record makes a new span",
                date: 22,
                listed: &[21],
                density: per_day(2000.0),
                cursor: Some(cursor(16, 21, "2026-11-19T12:00:00Z")),
                want: (midnight(22), midnight(23), None),
            },
            Row {
                what: "a date before the cursor's span makes a new span",
                date: 17,
                listed: &[],
                density: per_day(2000.0),
                cursor: Some(cursor(18, 21, "2026-11-19T12:00:00Z")),
                want: (midnight(16), midnight(18), None),
            },
        ];
        for row in rows {
            let listed = |d: Date| row.listed.iter().any(|&day| d == date(2026, 11, day));
            let got = plan_page(
                date(2026, 11, row.date),
                listed,
                &window,
                row.density,
                row.cursor.as_ref(),
                now,
            );
            let want = PagePlan {
                from: row.want.0,
                to: row.want.1,
                next: row.want.2.map(String::from),
            };
            assert_eq!(got, want, "{}", row.what);
        }
    }

    #[test]
    fn the_density_sums_every_page_and_a_thin_first_date_is_corrected_by_the_next() {
        let mut d = Density::default();
        assert_eq!(d.per_sec(), None, "nothing listed: no estimate");
        // The first date listed held calls only in its last eight hours: 160 over a day.
        d.observe(160, 86_400.0);
        assert!((d.per_sec().unwrap() * 86_400.0 - 160.0).abs() < 1e-9);
        // The next span held 1000 records (a full page) in its last 2 days.
        d.observe(1000, 2.0 * 86_400.0);
        assert!((d.per_sec().unwrap() * 86_400.0 - 1160.0 / 3.0).abs() < 1e-9);
        let mut empty = Density::default();
        empty.observe(0, 5.0 * 86_400.0);
        assert!((empty.per_sec().unwrap() * 5.0 * 86_400.0 - 1.0).abs() < 1e-9);
        let mut short = Density::default();
        short.observe(3, 1.0);
        assert_eq!(short.per_sec(), Some(3.0 / 60.0));
    }

    #[test]
    fn a_local_date_is_asked_in_utc_instants() {
        let window = Window::last_days(5, TimeZone::get("America/New_York").unwrap());
        let now: Timestamp = "2026-11-25T15:00:00Z".parse().unwrap();
        let got = plan_page(
            date(2026, 11, 23),
            |d| d == date(2026, 11, 22),
            &window,
            None,
            None,
            now,
        );
        assert_eq!(got.from.to_string(), "2026-11-23T05:00:00Z");
        assert_eq!(got.to.to_string(), "2026-11-24T05:00:00Z");
    }
}
