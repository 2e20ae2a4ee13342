//! The window of dates the mount shows, in one time zone.
//!
//! A date directory covers local midnight to local midnight, which is not always 24 hours (DST)
//! and never lines up with UTC days unless the zone is UTC: the call log is asked in UTC
//! instants computed here, and each record is filed under the local date of its start.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// Which dates are shown. `until == None` means "through today", moving as days pass.
#[derive(Debug, Clone)]
pub struct Window {
    pub tz: TimeZone,
    /// First date shown (inclusive). `None`: `days` back from today.
    pub since: Option<Date>,
    /// Last date shown (inclusive). `None`: today.
    pub until: Option<Date>,
    /// Number of dates when `since` is not set (90 by default, RingCentral's retention).
    pub days: u32,
}

impl Window {
    pub fn last_days(days: u32, tz: TimeZone) -> Window {
        Window {
            tz,
            since: None,
            until: None,
            days: days.max(1),
        }
    }

    /// Today's local date in the window's zone.
    pub fn today(&self, now: Timestamp) -> Date {
        now.to_zoned_datetime(self.tz.clone()).date()
    }

    /// The first and last dates shown at `now` (inclusive); `first > last` means none.
    pub fn bounds(&self, now: Timestamp) -> (Date, Date) {
        let last = self.until.unwrap_or_else(|| self.today(now));
        let first = self.since.unwrap_or_else(|| {
            last.checked_sub((i64::from(self.days) - 1).days())
                .unwrap_or(last)
        });
        (first, last)
    }

    /// Every date shown at `now`, oldest first.
    pub fn dates(&self, now: Timestamp) -> Vec<Date> {
        let (first, last) = self.bounds(now);
        let mut out = Vec::new();
        let mut d = first;
        while d <= last {
            out.push(d);
            match d.tomorrow() {
                Ok(next) => d = next,
                Err(_) => break,
            }
        }
        out
    }

    pub fn contains(&self, date: Date, now: Timestamp) -> bool {
        let (first, last) = self.bounds(now);
        first <= date && date <= last
    }

    /// The instants `[start, end)` of a local date.
    pub fn date_range(&self, date: Date) -> (Timestamp, Timestamp) {
        let start = self.start_of(date);
        let end = date
            .tomorrow()
            .map(|d| self.start_of(d))
            .unwrap_or(Timestamp::MAX);
        (start, end)
    }

    fn start_of(&self, date: Date) -> Timestamp {
        // `start_of_day` handles zones where midnight does not exist (DST gaps at 00:00).
        date.to_zoned_datetime(self.tz.clone())
            .and_then(|z| z.start_of_day())
            .map(|z| z.timestamp())
            .unwrap_or(Timestamp::MIN)
    }

    /// The local date an instant falls on.
    pub fn date_of(&self, t: Timestamp) -> Date {
        t.to_zoned_datetime(self.tz.clone()).date()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn ninety_days_end_today() {
        let w = Window::last_days(90, TimeZone::UTC);
        let now: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        let dates = w.dates(now);
        assert_eq!(dates.len(), 90);
        assert_eq!(*dates.last().unwrap(), date(2026, 11, 25));
        assert_eq!(dates[0], date(2026, 8, 28));
        assert!(w.contains(date(2026, 8, 28), now));
        assert!(!w.contains(date(2026, 8, 27), now));
        assert!(!w.contains(date(2026, 11, 26), now));
    }

    #[test]
    fn local_midnight_is_the_boundary() {
        let tz = TimeZone::get("America/New_York").unwrap();
        let w = Window::last_days(3, tz);
        let (s, e) = w.date_range(date(2026, 11, 23));
        assert_eq!(s.to_string(), "2026-11-23T05:00:00Z");
        assert_eq!(e.to_string(), "2026-11-24T05:00:00Z");
        // 23:59 local on the 23rd is 04:59 UTC on the 24th, and belongs to the 23rd.
        assert_eq!(
            w.date_of("2026-11-24T04:59:00Z".parse().unwrap()),
            date(2026, 11, 23)
        );
        assert_eq!(
            w.date_of("2026-11-24T05:00:00Z".parse().unwrap()),
            date(2026, 11, 24)
        );
    }

    #[test]
    fn dst_day_is_23_hours() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let w = Window::last_days(3, tz);
        let (s, e) = w.date_range(date(2026, 3, 29));
        assert_eq!(e.duration_since(s).as_secs(), 23 * 3600);
    }

    #[test]
    fn explicit_since_until() {
        let w = Window {
            tz: TimeZone::UTC,
            since: Some(date(2026, 1, 30)),
            until: Some(date(2026, 2, 2)),
            days: 90,
        };
        let now: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        assert_eq!(
            w.dates(now),
            vec![
                date(2026, 1, 30),
                date(2026, 1, 31),
                date(2026, 2, 1),
                date(2026, 2, 2)
            ]
        );
    }
}
