//! Directory entries: the names of a date's session directories and of a session's files.

use jiff::civil::Date;

use super::node::{CALL_JSON, Node};
use super::{DirEntry, Fs, Kind, Session, State};
use crate::catalog;

impl Fs {
    pub(super) fn session_children(
        &self,
        st: &mut State,
        session: &str,
        by_session: bool,
    ) -> Vec<DirEntry> {
        let Some(s) = st.index.sessions.get(session) else {
            return Vec::new();
        };
        let tz = &self.config.window.tz;
        let named: Vec<(String, String)> = s
            .recordings()
            .into_iter()
            .map(|rec| {
                let record = s
                    .records
                    .iter()
                    .find(|r| r.recordings.iter().any(|x| x.id == rec.id))
                    .unwrap_or(s.first());
                let kind = self.kind_of(st, rec.id.as_str());
                (
                    rec.id.to_string(),
                    catalog::recording_file_name(record, rec.id.as_str(), kind, tz),
                )
            })
            .collect();
        let mut out: Vec<DirEntry> = named
            .into_iter()
            .map(|(id, name)| DirEntry {
                ino: st.inodes.ino(Node::RecFile { id, by_session }),
                kind: Kind::File,
                name,
                attr: None,
            })
            .collect();
        out.push(DirEntry {
            ino: st.inodes.ino(Node::CallJson {
                session: session.to_string(),
                by_session,
            }),
            kind: Kind::File,
            name: CALL_JSON.to_string(),
            attr: None,
        });
        out
    }

    /// The session whose directory in `date` is called `name`.
    ///
    /// The session id is normally the name's last word: one name to build and compare. A session
    /// id that is not a plain token (a space, a `/` that naming replaced) does not survive as the
    /// last word, so then the date's names are compared one by one. Both paths compare the whole
    /// name, so a name maps to the session listed under it and to nothing else. Building every
    /// name of the date on each lookup instead (as `readdir` does) made `ls -l` of a date with
    /// 10,000 sessions quadratic (minutes); parsing the id alone made the directory of an odd
    /// session id impossible to enter, or another session's (found by tests/faults.rs).
    pub(super) fn session_named(&self, st: &State, date: Date, name: &str) -> Option<String> {
        let tz = &self.config.window.tz;
        let on_date = st.index.by_date.get(&date)?;
        let matches = |s: &Session| {
            !s.recordings().is_empty() && catalog::session_dir_name(s.first(), tz) == name
        };
        let last = name.rsplit(' ').next().unwrap_or(name);
        if on_date.contains(last)
            && let Some(s) = st.index.sessions.get(last)
            && matches(s)
        {
            return Some(s.session_id.clone());
        }
        st.index
            .sessions_on(date)
            .find(|s| matches(s))
            .map(|s| s.session_id.clone())
    }

    pub(super) fn date_children(&self, st: &mut State, date: Date) -> Vec<DirEntry> {
        let tz = self.config.window.tz.clone();
        let mut named: Vec<(String, String)> = st
            .index
            .sessions_on(date)
            .filter(|s| !s.recordings().is_empty())
            .map(|s| {
                (
                    catalog::session_dir_name(s.first(), &tz),
                    s.session_id.clone(),
                )
            })
            .collect();
        named.sort();
        named
            .into_iter()
            .map(|(name, session)| DirEntry {
                ino: st.inodes.ino(Node::SessionDir {
                    session,
                    by_session: false,
                }),
                kind: Kind::Dir,
                name,
                attr: None,
            })
            .collect()
    }
}
