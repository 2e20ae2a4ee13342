//! Attributes: what `getattr`/`lookup` tell the kernel, and for how long it may keep them.
//!
//! Past dates and recordings of known size never change: long TTLs, so the kernel asks again
//! rarely. A recording whose size is not exact yet shows an estimate with a zero TTL (see
//! [`Fs::recording_size`]), so the kernel never cuts or pads a read by it.

use std::time::{Duration, SystemTime};

use jiff::Timestamp;
use jiff::civil::Date;

use super::node::Node;
use super::{Fs, FsError, KnownRecording, Session, State, call_json, to_system};
use crate::catalog::{self, AudioKind};
use crate::media::Known;
use crate::store::CompleteFile;

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Attributes of a node, independent of fuser's types.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    /// How long the kernel may keep these attributes: zero while a size is only an estimate, so
    /// reads past the estimate ask again once the real size is known.
    pub attr_ttl: Duration,
    /// How long the kernel may keep the name -> inode mapping.
    pub entry_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: String,
    /// The entry's attributes as `lookup` would give them, when known without a request or a
    /// read of the call index (filled by [`Fs::opendir`]), so that the adapter answers
    /// READDIRPLUS with names and attributes in one round trip; `None` for an entry that only a
    /// lookup can describe (a by-* id whose records are not in memory).
    pub attr: Option<Attr>,
}

/// What `open` tells the kernel.
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    /// The content never changes: keep the page cache across opens.
    pub keep_cache: bool,
    /// The size is unknown (no `Content-Length`): bypass the page cache so reads are not cut at
    /// an estimated size.
    pub direct_io: bool,
    /// The recording complete on disk, checked, when backing files were asked for
    /// ([`Fs::offer_backing_files`]): the kernel may read it directly (passthrough) instead of
    /// sending reads for this handle. Its lease keeps it on disk while it is kept.
    pub backing: Option<CompleteFile>,
}

impl Fs {
    pub(super) fn dir_attr(&self, ino: u64, mtime: SystemTime, ttl: Duration) -> Attr {
        Attr {
            ino,
            kind: Kind::Dir,
            size: 0,
            perm: self.config.dir_mode,
            uid: self.config.uid,
            gid: self.config.gid,
            mtime,
            attr_ttl: ttl,
            entry_ttl: ttl,
        }
    }

    /// Well-formed attributes of kind `kind` that say nothing (zero size, zero TTLs): what the
    /// adapter sends for a listed entry whose attributes only a lookup can tell.
    pub fn placeholder(&self, ino: u64, kind: Kind) -> Attr {
        let mut a = match kind {
            Kind::Dir => self.dir_attr(ino, self.mounted_at, Duration::ZERO),
            Kind::File => self.file_attr(ino, 0, self.mounted_at, false),
        };
        a.entry_ttl = Duration::ZERO;
        a
    }

    pub(super) fn file_attr(&self, ino: u64, size: u64, mtime: SystemTime, exact: bool) -> Attr {
        Attr {
            ino,
            kind: Kind::File,
            size,
            perm: self.config.file_mode,
            uid: self.config.uid,
            gid: self.config.gid,
            mtime,
            attr_ttl: if exact {
                self.config.stable_ttl
            } else {
                Duration::ZERO
            },
            entry_ttl: self.config.stable_ttl,
        }
    }

    pub(super) fn is_recent(&self, date: Date, now: Timestamp) -> bool {
        let (_, end) = self.config.window.date_range(date);
        let settle = jiff::SignedDuration::try_from(self.config.settle).unwrap_or_default();
        end.checked_add(settle).map(|t| t > now).unwrap_or(true)
    }

    /// Whether a session's `call.json` may still change: its date may still get listed again.
    pub(super) fn call_json_may_change(&self, s: &Session) -> bool {
        let date = self.config.window.date_of(s.first().start_time);
        self.is_recent(date, Timestamp::now())
    }

    pub(super) fn date_ttl(&self, date: Date) -> Duration {
        if self.is_recent(date, Timestamp::now()) {
            // Short but never zero: a zero TTL makes the kernel look every entry up again
            // after each readdir.
            Duration::from_secs(1)
        } else {
            self.config.stable_ttl
        }
    }

    pub(super) fn attr_of(&self, st: &State, ino: u64, node: &Node) -> Result<Attr, FsError> {
        let now = Timestamp::now();
        match node {
            Node::Root => Ok(self.dir_attr(ino, self.mounted_at, Duration::from_secs(1))),
            Node::BySession | Node::ByRecording => {
                Ok(self.dir_attr(ino, self.mounted_at, Duration::from_secs(1)))
            }
            Node::Date(d) => {
                if !self.config.window.contains(*d, now) {
                    return Err(FsError::NotFound);
                }
                let start = self.config.window.date_range(*d).0;
                Ok(self.dir_attr(ino, to_system(start), self.date_ttl(*d)))
            }
            Node::SessionDir { session, .. } => {
                let s = st.index.sessions.get(session).ok_or(FsError::NotFound)?;
                Ok(self.dir_attr(ino, to_system(s.first().start_time), self.config.stable_ttl))
            }
            Node::CallJson { session, .. } => {
                let s = st.index.sessions.get(session).ok_or(FsError::NotFound)?;
                let size = call_json(s).len() as u64;
                let mut a = self.file_attr(ino, size, to_system(s.first().start_time), true);
                if self.call_json_may_change(s) {
                    // A listing again (or the event feed) may replace the record under a size
                    // the kernel holds; see `open`.
                    a.attr_ttl = Duration::from_secs(1);
                }
                Ok(a)
            }
            Node::CallsCsv(d) => {
                if !self.config.window.contains(*d, now) {
                    return Err(FsError::NotFound);
                }
                let size = self.calls_csv(st, *d).len() as u64;
                let start = self.config.window.date_range(*d).0;
                // Short: the size follows the listing and the names' extensions (see `open`).
                let ttl = Duration::from_secs(1);
                Ok(Attr {
                    attr_ttl: ttl,
                    entry_ttl: self.date_ttl(*d),
                    ..self.file_attr(ino, size, to_system(start), true)
                })
            }
            Node::RecFile { id, .. } | Node::ByRecFile(id) => {
                let rec = st.index.recordings.get(id).ok_or(FsError::NotFound)?;
                let mtime = rec.start.map(to_system).unwrap_or(self.mounted_at);
                let (size, exact) = self.recording_size(st, rec);
                Ok(self.file_attr(ino, size, mtime, exact))
            }
        }
    }

    /// The size of a recording: exact once a response stated it or a body ended at the content's
    /// end, else an estimate from its duration, published with a zero attribute TTL and opened
    /// with direct I/O so that the kernel never cuts or pads reads by it. The bytes received so
    /// far are never published: a lower bound taken for the size truncates the file for good.
    pub(super) fn recording_size(&self, st: &State, rec: &KnownRecording) -> (u64, bool) {
        if let Some(Known {
            size: Some(size), ..
        }) = self.media.known(&rec.id)
        {
            return (size, true);
        }
        let kind = self.kind_of(st, &rec.id);
        (
            catalog::estimated_size(kind, rec.duration.unwrap_or(60)),
            false,
        )
    }

    /// The format a recording's name says: what its own content response told (in this mount,
    /// or in an earlier one whose disk cache holds it), else the account's, else the assumed.
    pub(super) fn kind_of(&self, st: &State, id: &str) -> AudioKind {
        st.kinds
            .get(id)
            .copied()
            .or_else(|| {
                let known = self.media.known(id)?;
                known
                    .content_type
                    .as_deref()
                    .and_then(AudioKind::from_content_type)
            })
            .or(st.account_kind)
            .unwrap_or(self.config.assumed_format)
    }
}
