//! Extended attributes: what the mount already knows of a call, as `user.ringcentral.*` on
//! session directories and recording files (`getfattr -d`, file managers' "properties").
//!
//! Every value comes from records the core holds (the call log's listing, or the call index on
//! disk) and from the media layer's learned content type: reading attributes never sends a
//! request. Names outside [`PREFIX`] are not ours; the adapter answers them ENODATA without
//! asking the core.

use super::node::Node;
use super::{Fs, FsError, State};
use crate::model::{CallRecord, Party};

/// The namespace of every attribute ringfs shows.
pub const PREFIX: &str = "user.ringcentral.";

/// One attribute: its full name and value.
pub type Xattr = (String, Vec<u8>);

impl Fs {
    /// The attributes of `ino`, in a fixed order; empty for nodes that carry none (the root,
    /// dates, `call.json`). No request is sent: only what is held is shown, and a value learned
    /// later (the content type, once the recording was opened) appears then.
    pub async fn xattrs(&self, ino: u64) -> Result<Vec<Xattr>, FsError> {
        let node = self.node_of(ino)?;
        self.hold(&node).await;
        let st = self.state();
        Ok(self.xattrs_of(&st, &node))
    }

    /// One attribute of `ino`: [`FsError::NoData`] when it has none of that name.
    pub async fn xattr(&self, ino: u64, name: &str) -> Result<Vec<u8>, FsError> {
        if !name.starts_with(PREFIX) {
            return Err(FsError::NoData);
        }
        self.xattrs(ino)
            .await?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or(FsError::NoData)
    }

    fn xattrs_of(&self, st: &State, node: &Node) -> Vec<Xattr> {
        let mut out = Vec::new();
        match node {
            Node::SessionDir { session, .. } => {
                if let Some(s) = st.index.sessions.get(session) {
                    call_attrs(&mut out, s.first());
                }
            }
            Node::RecFile { id, .. } | Node::ByRecFile(id) => {
                let Some(rec) = st.index.recordings.get(id) else {
                    return out;
                };
                // The record that carries the recording (a transferred call has several).
                let record = rec
                    .session_id
                    .as_ref()
                    .and_then(|s| st.index.sessions.get(s))
                    .and_then(|s| {
                        s.records
                            .iter()
                            .find(|r| r.recordings.iter().any(|x| x.id == id.as_str()))
                            .or(s.records.first())
                    });
                match record {
                    Some(r) => call_attrs(&mut out, r),
                    // Found through by-recording alone: the recording's metadata only.
                    None => {
                        if let Some(d) = rec.duration {
                            push(&mut out, "duration", d.to_string());
                        }
                    }
                }
                push(&mut out, "recording_id", id.clone());
                if let Some(ct) = self.media.known(id).and_then(|k| k.content_type) {
                    push(&mut out, "content_type", ct);
                }
            }
            Node::Root
            | Node::Date(_)
            | Node::CallJson { .. }
            | Node::CallsCsv(_)
            | Node::BySession
            | Node::ByRecording => {}
        }
        out
    }
}

fn push(out: &mut Vec<Xattr>, name: &str, value: String) {
    if !value.is_empty() {
        out.push((format!("{PREFIX}{name}"), value.into_bytes()));
    }
}

/// The number a party is reached at: the phone number, else the extension number.
pub(super) fn number_of(p: &Party) -> String {
    p.phone_number
        .clone()
        .or_else(|| p.extension_number.clone())
        .unwrap_or_default()
}

/// A string field of the record as the API returned it (`result`, `type`).
pub(super) fn raw_str(r: &CallRecord, key: &str) -> String {
    r.raw
        .value()
        .get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

pub(super) fn direction(r: &CallRecord) -> &'static str {
    if r.inbound { "Inbound" } else { "Outbound" }
}

fn call_attrs(out: &mut Vec<Xattr>, r: &CallRecord) {
    push(out, "session_id", r.session_id.to_string());
    if let Some(t) = &r.telephony_session_id {
        push(out, "telephony_session_id", t.clone());
    }
    push(out, "direction", direction(r).to_string());
    push(out, "from_number", number_of(&r.from));
    push(out, "from_name", r.from.name.clone().unwrap_or_default());
    push(out, "to_number", number_of(&r.to));
    push(out, "to_name", r.to.name.clone().unwrap_or_default());
    push(out, "start_time", r.start_time.to_string());
    push(out, "duration", r.duration.to_string());
    push(out, "result", raw_str(r, "result"));
    push(out, "type", raw_str(r, "type"));
}

/// The `listxattr` answer: every name, each ended by a NUL.
pub fn name_list(attrs: &[Xattr]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, _) in attrs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
    }
    out
}
