//! `calls.csv` in each date directory: one row per recording of the date's calls, for a
//! spreadsheet or a script, rendered from the date's listing (no request of its own).
//!
//! RFC 4180: a header row, CRLF line ends, and a field quoted when it holds a comma, a quote,
//! CR or LF, with quotes doubled inside. The file is rendered again whenever it is asked for,
//! so it follows the listing; an open handle keeps the bytes it was opened with, so its reads
//! agree with each other.

use std::borrow::Cow;

use jiff::civil::Date;

use super::xattr::{direction, number_of, raw_str};
use super::{Fs, State};
use crate::catalog;

/// The columns, in order.
pub const HEADER: [&str; 11] = [
    "start",
    "direction",
    "from",
    "to",
    "from_name",
    "to_name",
    "duration",
    "result",
    "session_id",
    "recording_id",
    "path",
];

/// One field as RFC 4180 writes it.
pub fn field(s: &str) -> Cow<'_, str> {
    if s.contains([',', '"', '\r', '\n']) {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(s)
    }
}

/// The whole file: the header, then `rows`.
pub fn render<R: AsRef<[String]>>(rows: &[R]) -> Vec<u8> {
    let mut out = String::new();
    let mut line = |fields: &mut dyn Iterator<Item = &str>| {
        let mut first = true;
        for f in fields {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&field(f));
        }
        out.push_str("\r\n");
    };
    line(&mut HEADER.iter().copied());
    for r in rows {
        line(&mut r.as_ref().iter().map(String::as_str));
    }
    out.into_bytes()
}

impl Fs {
    /// `calls.csv` of `date` from the records held: rows in the order of the date's
    /// directories, then of their recordings.
    pub(super) fn calls_csv(&self, st: &State, date: Date) -> Vec<u8> {
        let tz = &self.config.window.tz;
        let mut sessions: Vec<(String, &super::Session)> = st
            .index
            .sessions_on(date)
            .filter(|s| !s.recordings().is_empty())
            .map(|s| (catalog::session_dir_name(s.first(), tz), s))
            .collect();
        sessions.sort_by(|a, b| a.0.cmp(&b.0));
        let mut rows: Vec<Vec<String>> = Vec::new();
        for (dir, s) in sessions {
            for rec in s.recordings() {
                let r = s
                    .records
                    .iter()
                    .find(|r| r.recordings.iter().any(|x| x.id == rec.id))
                    .unwrap_or(s.first());
                let kind = self.kind_of(st, rec.id.as_str());
                let file = catalog::recording_file_name(r, rec.id.as_str(), kind, tz);
                rows.push(vec![
                    r.start_time.to_string(),
                    direction(r).to_string(),
                    number_of(&r.from),
                    number_of(&r.to),
                    r.from.name.clone().unwrap_or_default(),
                    r.to.name.clone().unwrap_or_default(),
                    r.duration.to_string(),
                    raw_str(r, "result"),
                    r.session_id.to_string(),
                    rec.id.to_string(),
                    format!("{dir}/{file}"),
                ]);
            }
        }
        render(&rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_needed() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\r\nlines"), "\"two\r\nlines\"");
        assert_eq!(field("lf\n"), "\"lf\n\"");
        assert_eq!(field(""), "");
    }

    #[test]
    fn rows_end_with_crlf_after_a_header() {
        let rows = vec![vec!["1".to_string(), "x,y".to_string()]];
        let out = String::from_utf8(render(&rows)).unwrap();
        let mut lines = out.split("\r\n");
        assert_eq!(lines.next().unwrap(), HEADER.join(","));
        assert_eq!(lines.next().unwrap(), "1,\"x,y\"");
        assert_eq!(lines.next().unwrap(), "");
        assert!(lines.next().is_none());
        assert!(!out.replace("\r\n", "").contains('\n'));
    }
}
