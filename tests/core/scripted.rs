//! A call log in memory, answering like RingCentral's: records of `[from, to)` newest first,
//! 1000 a page, `navigation.nextPage` (here an opaque token) to continue; a session's records by
//! `sessionId`; recording metadata, 404 `CMN-102` for an unknown id. Every query it answers is
//! recorded, so tests count requests exactly.
//!
//! Records are written as the JSON a real call log returns and parsed with
//! [`CallRecord::from_json`], the parser the HTTP client uses.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;
use ringfs::api::{ApiError, CallRecord, Priority, RecordingMeta, Scope};
use ringfs::fs::{CallLog, Page};
use ringfs::media::BoxFuture;
use serde_json::{Value, json};

/// Records per page, RingCentral's `perPage` maximum (what the client asks for).
pub const PAGE: usize = 1000;

/// The media host the records' `contentUri`s point at.
pub const MEDIA: &str = "https://media.ringcentral.test";

/// Which method of [`CallLog`] was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    Page,
    FindSession,
    RecordingMeta,
}

/// One call of the call log, as asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub kind: QueryKind,
    /// `None` for recording metadata (not a call-log endpoint).
    pub scope: Option<Scope>,
    /// `dateFrom` (for a session search, `since`).
    pub from: Option<Timestamp>,
    /// `dateTo`.
    pub to: Option<Timestamp>,
    /// The token continuing an earlier page query.
    pub next: Option<String>,
    /// The session or recording id asked for.
    pub id: Option<String>,
}

impl Query {
    pub fn page(scope: Scope, from: Timestamp, to: Timestamp, next: Option<String>) -> Query {
        Query {
            kind: QueryKind::Page,
            scope: Some(scope),
            from: Some(from),
            to: Some(to),
            next,
            id: None,
        }
    }
    pub fn find_session(scope: Scope, id: &str, since: Timestamp) -> Query {
        Query {
            kind: QueryKind::FindSession,
            scope: Some(scope),
            from: Some(since),
            to: None,
            next: None,
            id: Some(id.into()),
        }
    }
    pub fn recording_meta(id: &str) -> Query {
        Query {
            kind: QueryKind::RecordingMeta,
            scope: None,
            from: None,
            to: None,
            next: None,
            id: Some(id.into()),
        }
    }
}

/// A call to put in the log: one record, with its recordings.
#[derive(Debug, Clone)]
pub struct Call {
    pub session: String,
    /// The record id.
    pub id: String,
    pub start: Timestamp,
    pub duration: u64,
    pub inbound: bool,
    /// The other party's phone number (`None`: an extension, `ext`).
    pub number: Option<String>,
    pub ext: Option<String>,
    pub name: Option<String>,
    /// Recording ids: the first on the record, the others on legs (as a transfer shows them).
    pub recordings: Vec<String>,
}

impl Call {
    /// An inbound call from `+1555...` with one recording.
    pub fn new(session: impl Into<String>, start: Timestamp, recording: impl Into<String>) -> Call {
        let session = session.into();
        Call {
            id: format!("L{session}"),
            number: Some(format!(
                "+1555{}",
                &session[session.len().saturating_sub(7)..]
            )),
            session,
            start,
            duration: 60,
            inbound: true,
            ext: None,
            name: None,
            recordings: vec![recording.into()],
        }
    }

    /// The record as RingCentral's call log returns it (Detailed view, trimmed to what varies).
    pub fn json(&self) -> Value {
        let direction = if self.inbound { "Inbound" } else { "Outbound" };
        let party =
            json!({"phoneNumber": self.number, "extensionNumber": self.ext, "name": self.name});
        let own = json!({"extensionNumber": "101", "name": "Front Desk"});
        let (from, to) = if self.inbound {
            (party, own)
        } else {
            (own, party)
        };
        let recording = |id: &String| {
            json!({
                "uri": format!("https://platform.ringcentral.test/restapi/v1.0/account/1/recording/{id}"),
                "id": id,
                "type": "Automatic",
                "contentUri": content_uri(id),
            })
        };
        let mut v = json!({
            "uri": format!("https://platform.ringcentral.test/restapi/v1.0/account/1/call-log/{}?view=Detailed", self.id),
            "id": self.id,
            "sessionId": self.session,
            "telephonySessionId": format!("s-{}", self.session),
            "startTime": format!("{:.3}", self.start),
            "duration": self.duration,
            "durationMs": self.duration * 1000,
            "type": "Voice",
            "direction": direction,
            "action": "Phone Call",
            "result": "Accepted",
            "from": from,
            "to": to,
        });
        if let Some(first) = self.recordings.first() {
            v["recording"] = recording(first);
        }
        v["legs"] = Value::Array(
            self.recordings
                .iter()
                .map(|id| json!({"legType": "Accept", "direction": direction, "recording": recording(id)}))
                .collect(),
        );
        v
    }
}

/// Where the media of recording `id` lives.
pub fn content_uri(id: &str) -> String {
    format!("{MEDIA}/restapi/v1.0/account/1/recording/{id}/content")
}

/// `n` calls, one every `step` seconds going back from `newest`, session ids from `first_session`
/// and recording ids from `first_recording` up.
pub fn calls_back_from(
    newest: Timestamp,
    n: usize,
    step: i64,
    first_session: u64,
    first_recording: u64,
) -> Vec<Call> {
    (0..n)
        .map(|i| {
            let start = newest - jiff::SignedDuration::from_secs(step * i as i64);
            Call::new(
                (first_session + i as u64).to_string(),
                start,
                (first_recording + i as u64).to_string(),
            )
        })
        .collect()
}

/// A continued page query: what the `next` token stands for.
#[derive(Debug, Clone)]
struct Continuation {
    scope: Scope,
    from: Timestamp,
    to: Timestamp,
    offset: usize,
}

#[derive(Default)]
struct State {
    queries: Vec<Query>,
    tokens: HashMap<String, Continuation>,
}

/// The scripted call log. Both scopes see the same records (a 403 for the account's is injected
/// with [`super::faulty::Faulty`]).
pub struct ScriptedLog {
    /// Newest first, as the call log orders them.
    records: Mutex<Vec<CallRecord>>,
    /// Whether [`CallLog::recording_content_url`] knows the media host.
    media_host_known: bool,
    state: Mutex<State>,
}

impl ScriptedLog {
    pub fn new(calls: &[Call]) -> ScriptedLog {
        let mut records: Vec<CallRecord> = calls
            .iter()
            .map(|c| CallRecord::from_json(&c.json()).expect("a well-formed record"))
            .collect();
        sort(&mut records);
        ScriptedLog {
            records: Mutex::new(records),
            media_host_known: true,
            state: Mutex::default(),
        }
    }

    /// A log whose client cannot build media URLs (no media host known): by-recording lookups go
    /// to the metadata endpoint.
    pub fn without_media_host(mut self) -> ScriptedLog {
        self.media_host_known = false;
        self
    }

    /// Puts `call` in the log from now on (a record that shows after the call ended).
    pub fn add(&self, call: &Call) {
        let mut records = self.records.lock().unwrap();
        records.push(CallRecord::from_json(&call.json()).expect("a well-formed record"));
        sort(&mut records);
    }

    /// Every query answered so far, in order.
    pub fn queries(&self) -> Vec<Query> {
        self.state.lock().unwrap().queries.clone()
    }

    /// The page queries answered so far.
    pub fn pages(&self) -> Vec<Query> {
        self.queries()
            .into_iter()
            .filter(|q| q.kind == QueryKind::Page)
            .collect()
    }

    fn record(&self, q: Query) {
        self.state.lock().unwrap().queries.push(q);
    }

    fn answer_page(
        &self,
        scope: Scope,
        from: Timestamp,
        to: Timestamp,
        next: Option<String>,
    ) -> Result<Page, ApiError> {
        let context = format!("GET {} call log", scope.name());
        let mut st = self.state.lock().unwrap();
        st.queries.push(Query::page(scope, from, to, next.clone()));
        let offset = match &next {
            None => 0,
            Some(token) => {
                let c = st
                    .tokens
                    .get(token)
                    .cloned()
                    .ok_or_else(|| ApiError::Decode {
                        context: context.clone(),
                        detail: format!("unknown next page {token:?}"),
                    })?;
                // The token carries the query it continues: asking another one with it is a bug.
                if (c.scope, c.from, c.to) != (scope, from, to) {
                    return Err(ApiError::Decode {
                        context,
                        detail: format!("next page {token:?} continues {c:?}, not {from} .. {to}"),
                    });
                }
                c.offset
            }
        };
        let all = self.records.lock().unwrap();
        let matching: Vec<&CallRecord> = all
            .iter()
            .filter(|r| from <= r.start_time && r.start_time < to)
            .collect();
        let end = (offset + PAGE).min(matching.len());
        let records = matching
            .get(offset..end)
            .unwrap_or_default()
            .iter()
            .map(|r| (*r).clone())
            .collect();
        let next = (end < matching.len()).then(|| {
            let token = format!("next-{}", st.tokens.len() + 1);
            st.tokens.insert(
                token.clone(),
                Continuation {
                    scope,
                    from,
                    to,
                    offset: end,
                },
            );
            token
        });
        Ok(Page { records, next })
    }
}

fn sort(records: &mut [CallRecord]) {
    records.sort_by(|a, b| {
        b.start_time
            .cmp(&a.start_time)
            .then_with(|| b.id.cmp(&a.id))
    });
}

fn not_found(name: &str, value: &str, context: String) -> ApiError {
    ApiError::Service {
        status: 404,
        error_code: Some("CMN-102".into()),
        message: format!("Resource for parameter [{name}] is not found"),
        context: format!("{context} ({value})"),
    }
}

impl CallLog for ScriptedLog {
    fn page(
        &self,
        scope: Scope,
        from: Timestamp,
        to: Timestamp,
        next: Option<String>,
        _prio: Priority,
    ) -> BoxFuture<'_, Result<Page, ApiError>> {
        let answer = self.answer_page(scope, from, to, next);
        Box::pin(async move { answer })
    }

    fn find_session<'a>(
        &'a self,
        scope: Scope,
        session_id: &'a str,
        since: Timestamp,
        _prio: Priority,
    ) -> BoxFuture<'a, Result<Vec<CallRecord>, ApiError>> {
        self.record(Query::find_session(scope, session_id, since));
        let records = self
            .records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.session_id == session_id && r.start_time >= since)
            .cloned()
            .collect();
        Box::pin(async move { Ok(records) })
    }

    fn recording_meta<'a>(
        &'a self,
        id: &'a str,
        _prio: Priority,
    ) -> BoxFuture<'a, Result<RecordingMeta, ApiError>> {
        self.record(Query::recording_meta(id));
        let found = self.records.lock().unwrap().iter().find_map(|r| {
            r.recordings
                .iter()
                .find(|x| x.id == id)
                .map(|x| RecordingMeta {
                    id: x.id.clone(),
                    content_uri: x.content_uri.clone(),
                    content_type: Some("audio/mpeg".into()),
                    duration: Some(r.duration),
                })
        });
        let answer =
            found.ok_or_else(|| not_found("recordingId", id, format!("recording {id} metadata")));
        Box::pin(async move { answer })
    }

    fn recording_content_url(&self, id: &str) -> Option<String> {
        self.media_host_known.then(|| content_uri(id))
    }
}
