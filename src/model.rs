//! The domain model: call-log records, the parties of a call, recordings, and the ids that name
//! them.
//!
//! These types are what every layer talks about, so they live below all of them: the client
//! produces them, the naming rules and the filesystem consume them. This module uses no other
//! ringfs module; it only knows the shape of the data.
//!
//! Parsing is lenient because the call log is the service's data, not ours: unknown fields are
//! ignored, optional fields may be missing, and ids that arrive as numbers are read as strings.
//! A record is *broken* (and [`CallRecord::from_json`] refuses it) when it lacks what ringfs
//! cannot do without: `id`, `sessionId` and a parseable `startTime`. Recordings are collected
//! from the record and from every leg (Detailed view) and deduplicated by recording id, because
//! one recording can appear in several legs.

use std::fmt;

use serde_json::Value;

/// Defines a string id newtype: compared, hashed and ordered as its text, shown as its text.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The id as the service wrote it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_owned())
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Comparing with text reads naturally where an id meets a name or a path component;
        // comparing two different kinds of id stays a type error.
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

string_id! {
    /// `recording.id`: the stable key of a recording (its content never changes).
    RecordingId
}

string_id! {
    /// `sessionId`: one call session; a call transferred or forwarded keeps it across its legs
    /// and records.
    SessionId
}

/// One call-log record.
#[derive(Clone, Debug)]
pub struct CallRecord {
    /// The record id (of this call-log entry, not of a recording).
    pub id: String,
    /// `sessionId`: the call session; ringfs names directories after it.
    pub session_id: SessionId,
    /// `telephonySessionId`, when present.
    pub telephony_session_id: Option<String>,
    /// `startTime` (UTC).
    pub start_time: jiff::Timestamp,
    /// `duration` in whole seconds (0 when missing).
    pub duration: u64,
    /// `direction == "Inbound"`.
    pub inbound: bool,
    /// The calling party.
    pub from: Party,
    /// The called party.
    pub to: Party,
    /// Record-level and legs' recordings, deduplicated by id, in order of appearance.
    pub recordings: Vec<RecordingRef>,
    /// The record exactly as returned (for `call.json`).
    pub raw: Value,
}

/// One page of call-log records, and where the query goes on.
#[derive(Debug, Clone, Default)]
pub struct CallLogPage {
    /// The usable records (broken ones are skipped).
    pub records: Vec<CallRecord>,
    /// `navigation.nextPage.uri`, absent on the last page.
    pub next: Option<String>,
}

/// One end of a call; every field may be missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Party {
    /// E.164 phone number.
    pub phone_number: Option<String>,
    /// Internal extension number.
    pub extension_number: Option<String>,
    /// Caller id name.
    pub name: Option<String>,
}

/// A recording as referenced by a call-log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingRef {
    /// `recording.id`.
    pub id: RecordingId,
    /// Absolute URL of the content on the media host.
    pub content_uri: String,
}

/// A recording's metadata (`GET /restapi/v1.0/account/~/recording/{id}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingMeta {
    /// Recording id.
    pub id: RecordingId,
    /// Absolute URL of the content.
    pub content_uri: String,
    /// `audio/mpeg`, `audio/wav` or `audio/x-wav` when given. The content response's
    /// `Content-Type` is the authority.
    pub content_type: Option<String>,
    /// Duration in seconds, when given.
    pub duration: Option<u64>,
}

/// A JSON scalar that should be a string; ids sometimes arrive as numbers.
fn string_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn u64_of(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.round() as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn party_of(v: Option<&Value>) -> Party {
    let Some(v) = v.filter(|v| v.is_object()) else {
        return Party::default();
    };
    Party {
        phone_number: string_of(v.get("phoneNumber")),
        extension_number: string_of(v.get("extensionNumber")),
        name: string_of(v.get("name")),
    }
}

fn recording_of(v: Option<&Value>) -> Option<RecordingRef> {
    let v = v?;
    Some(RecordingRef {
        id: string_of(v.get("id"))?.into(),
        content_uri: string_of(v.get("contentUri"))?,
    })
}

impl CallRecord {
    /// Parses one record; `Err` says what made it unusable.
    pub fn from_json(raw: &Value) -> Result<CallRecord, String> {
        if !raw.is_object() {
            return Err("record is not an object".into());
        }
        let id = string_of(raw.get("id")).ok_or("missing id")?;
        let session_id = string_of(raw.get("sessionId"))
            .ok_or_else(|| format!("record {id}: missing sessionId"))?;
        let start = raw
            .get("startTime")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("record {id}: missing startTime"))?;
        let start_time: jiff::Timestamp = start
            .parse()
            .map_err(|e| format!("record {id}: bad startTime {start:?}: {e}"))?;
        let mut recordings: Vec<RecordingRef> = Vec::new();
        let mut add = |r: Option<RecordingRef>| {
            if let Some(r) = r
                && !recordings.iter().any(|x| x.id == r.id)
            {
                recordings.push(r);
            }
        };
        add(recording_of(raw.get("recording")));
        if let Some(legs) = raw.get("legs").and_then(Value::as_array) {
            for leg in legs {
                add(recording_of(leg.get("recording")));
            }
        }
        Ok(CallRecord {
            telephony_session_id: string_of(raw.get("telephonySessionId")),
            start_time,
            duration: u64_of(raw.get("duration"))
                .or_else(|| u64_of(raw.get("durationMs")).map(|ms| ms / 1000))
                .unwrap_or(0),
            inbound: raw.get("direction").and_then(Value::as_str) == Some("Inbound"),
            from: party_of(raw.get("from")),
            to: party_of(raw.get("to")),
            recordings,
            raw: raw.clone(),
            id,
            session_id: session_id.into(),
        })
    }
}

/// A telephony session event: the body of a `/telephony/sessions` notification, as far as ringfs
/// uses it. There is no "recording ready" event: a recording becomes fetchable some seconds after
/// the party that recorded it is `Disconnected`, and its call-log record shows 15-30 s after the
/// call ends (see [`SessionEvent::ended`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEvent {
    /// `body.sequence`: per session; events may arrive out of order.
    pub sequence: Option<u64>,
    /// `body.sessionId`: the call-log's `sessionId` (the directory name).
    pub session_id: SessionId,
    /// `body.telephonySessionId`.
    pub telephony_session_id: Option<String>,
    /// `body.eventTime`, else the envelope's `timestamp`.
    pub event_time: Option<jiff::Timestamp>,
    /// The parties this event reports on (often only the one that changed).
    pub parties: Vec<PartyEvent>,
}

/// One party of a [`SessionEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartyEvent {
    /// `parties[].id`.
    pub id: Option<String>,
    /// `parties[].extensionId`, when the party is an extension of the account.
    pub extension_id: Option<String>,
    /// `direction == "Inbound"`.
    pub inbound: bool,
    /// `status.code`: `Setup`, `Proceeding`, `Answered`, `Hold`, `Disconnected`, ...
    pub status: String,
    /// `status.reason`: set when the party left but the session goes on (`BlindTransfer`, ...).
    pub reason: Option<String>,
    /// `recordings[]`: `active == false` means paused or stopped, not "ready".
    pub recordings: Vec<EventRecording>,
    pub from: Party,
    pub to: Party,
}

/// A recording named by an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecording {
    pub id: RecordingId,
    pub active: bool,
}

impl SessionEvent {
    /// Parses a notification: the whole envelope (`{uuid, event, body: {...}}`) or its body alone.
    /// `sessionId` is required; everything else may be missing.
    pub fn from_json(v: &Value) -> Result<SessionEvent, String> {
        let body = v.get("body").filter(|b| b.is_object()).unwrap_or(v);
        if !body.is_object() {
            return Err("event is not an object".into());
        }
        let session_id = string_of(body.get("sessionId")).ok_or("event: missing sessionId")?;
        let time = |x: Option<&Value>| x.and_then(Value::as_str).and_then(|t| t.parse().ok());
        let parties = body
            .get("parties")
            .and_then(Value::as_array)
            .map(|ps| ps.iter().map(party_event_of).collect())
            .unwrap_or_default();
        Ok(SessionEvent {
            sequence: u64_of(body.get("sequence")),
            session_id: session_id.into(),
            telephony_session_id: string_of(body.get("telephonySessionId")),
            event_time: time(body.get("eventTime")).or_else(|| time(v.get("timestamp"))),
            parties,
        })
    }

    /// The call has ended for ringfs: a party is `Disconnected` with no `status.reason` (a reason
    /// such as `BlindTransfer` means the session goes on without that party).
    pub fn ended(&self) -> bool {
        self.parties
            .iter()
            .any(|p| p.status == "Disconnected" && p.reason.is_none())
    }

    /// The recordings this event names, deduplicated, in order of appearance.
    pub fn recording_ids(&self) -> Vec<RecordingId> {
        let mut ids: Vec<RecordingId> = Vec::new();
        for r in self.parties.iter().flat_map(|p| &p.recordings) {
            if !ids.contains(&r.id) {
                ids.push(r.id.clone());
            }
        }
        ids
    }
}

fn party_event_of(p: &Value) -> PartyEvent {
    let status = p.get("status");
    PartyEvent {
        id: string_of(p.get("id")),
        extension_id: string_of(p.get("extensionId")),
        inbound: p.get("direction").and_then(Value::as_str) == Some("Inbound"),
        status: status
            .and_then(|s| s.get("code"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        reason: status
            .and_then(|s| s.get("reason"))
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
            .map(String::from),
        recordings: p
            .get("recordings")
            .and_then(Value::as_array)
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| {
                        Some(EventRecording {
                            id: string_of(r.get("id"))?.into(),
                            active: r.get("active").and_then(Value::as_bool).unwrap_or(false),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
        from: party_of(p.get("from")),
        to: party_of(p.get("to")),
    }
}

/// What the live event feed tells the filesystem. The feed (the WebSocket subscription, in
/// `api`) sends these; the core reacts to them without knowing the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LiveNotice {
    /// The subscription is live. `gap`: events may have been missed before it (a first
    /// subscription, or a reconnect whose recovery failed), so what they would have said must be
    /// learned from the call log once.
    Live { gap: bool },
    /// A telephony session event.
    Event(SessionEvent),
    /// The connection is lost and being recovered: until the next `Live`, changes are learned
    /// by listing again, as without events.
    Down,
    /// Events are not available to this app or user (a refused subscription, a missing
    /// permission): say why once, and list as without events from now on.
    Unavailable(String),
}

impl RecordingMeta {
    /// Parses the metadata answer; `id` and `contentUri` are required.
    pub fn from_json(v: &Value) -> Result<RecordingMeta, String> {
        let id = string_of(v.get("id")).ok_or("missing id")?;
        let content_uri = string_of(v.get("contentUri"))
            .ok_or_else(|| format!("recording {id}: missing contentUri"))?;
        Ok(RecordingMeta {
            id: id.into(),
            content_uri,
            content_type: string_of(v.get("contentType")),
            duration: u64_of(v.get("duration")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full_record() -> Value {
        json!({
            "uri": "https://platform.example/restapi/v1.0/account/1/call-log/abc",
            "id": "abc", "sessionId": "4242", "telephonySessionId": "s-42",
            "startTime": "2024-03-08T10:11:12.345Z", "duration": 75, "durationMs": 75123,
            "type": "Voice", "direction": "Inbound", "action": "Phone Call", "result": "Accepted",
            "from": {"phoneNumber": "+15551230000", "name": "Alice", "location": "Nowhere"},
            "to": {"extensionNumber": "101", "extensionId": 77},
            "recording": {"uri": "u", "id": "900", "type": "Automatic", "contentUri": "https://media.example/r/900/content"},
            "someFutureField": {"nested": [1, 2, 3]},
            "legs": [
                {"legType": "Accept", "recording": {"id": "900", "contentUri": "https://media.example/r/900/content"}},
                {"legType": "FollowMe", "recording": {"id": 901, "contentUri": "https://media.example/r/901/content"}},
                {"legType": "Transfer"}
            ]
        })
    }

    #[test]
    fn parses_a_full_record() {
        let raw = full_record();
        let r = CallRecord::from_json(&raw).unwrap();
        assert_eq!(r.id, "abc");
        assert_eq!(r.session_id, "4242");
        assert_eq!(r.telephony_session_id.as_deref(), Some("s-42"));
        assert_eq!(
            r.start_time,
            "2024-03-08T10:11:12.345Z"
                .parse::<jiff::Timestamp>()
                .unwrap()
        );
        assert_eq!(r.duration, 75);
        assert!(r.inbound);
        assert_eq!(r.from.phone_number.as_deref(), Some("+15551230000"));
        assert_eq!(r.from.name.as_deref(), Some("Alice"));
        assert_eq!(r.to.extension_number.as_deref(), Some("101"));
        let ids: Vec<_> = r.recordings.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["900", "901"]);
        assert_eq!(r.raw, raw);
    }

    #[test]
    fn tolerates_missing_optional_fields() {
        let raw = json!({"id": 5, "sessionId": 6, "startTime": "2024-03-08T10:11:12Z"});
        let r = CallRecord::from_json(&raw).unwrap();
        assert_eq!((r.id.as_str(), r.session_id.as_str()), ("5", "6"));
        assert_eq!(r.duration, 0);
        assert!(!r.inbound);
        assert_eq!(r.from, Party::default());
        assert!(r.recordings.is_empty());
        // durationMs alone, wrong-typed parties, a recording without contentUri.
        let raw = json!({"id": "a", "sessionId": "b", "startTime": "2024-03-08T10:11:12Z",
            "durationMs": 2500, "from": "nobody", "to": null, "recording": {"id": "1"}});
        let r = CallRecord::from_json(&raw).unwrap();
        assert_eq!(r.duration, 2);
        assert!(r.recordings.is_empty());
    }

    #[test]
    fn refuses_broken_records() {
        for raw in [
            json!({"id": "no-session", "startTime": "2024-03-08T10:11:12Z"}),
            json!({"id": "bad-time", "sessionId": "1", "startTime": "yesterday"}),
            json!({"sessionId": "1", "startTime": "2024-03-08T10:11:12Z"}),
            json!("not an object"),
        ] {
            assert!(CallRecord::from_json(&raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn parses_recording_meta() {
        let m = RecordingMeta::from_json(&json!({"id": "9", "contentUri": "https://m/9", "contentType": "audio/x-wav", "duration": 31})).unwrap();
        assert_eq!(m.id, "9");
        assert_eq!(m.content_type.as_deref(), Some("audio/x-wav"));
        assert_eq!(m.duration, Some(31));
        assert!(RecordingMeta::from_json(&json!({"id": "9"})).is_err());
        assert!(RecordingMeta::from_json(&json!("x")).is_err());
    }

    #[test]
    fn parses_the_seed_event() {
        let v = json!({
            "uuid": "1", "event": "/restapi/v1.0/account/1/extension/2/telephony/sessions",
            "timestamp": "2019-03-08T22:30:40.059Z",
            "body": {"sequence": 7, "sessionId": "1234567890", "telephonySessionId": "s-1",
                "eventTime": "2019-03-08T22:30:39.938Z",
                "parties": [{"id": "p-2", "extensionId": "22222222", "direction": "Inbound",
                    "to": {"phoneNumber": "+16505550100", "name": "Jane Doe"},
                    "from": {"phoneNumber": "+14155550100", "name": "John Smith"},
                    "recordings": [{"id": "44444444", "active": false}, {"id": 44444444}],
                    "status": {"code": "Answered", "rcc": false}}]}
        });
        let e = SessionEvent::from_json(&v).unwrap();
        assert_eq!(e.sequence, Some(7));
        assert_eq!(e.session_id, "1234567890");
        assert_eq!(e.telephony_session_id.as_deref(), Some("s-1"));
        assert_eq!(e.event_time.unwrap().to_string(), "2019-03-08T22:30:39.938Z");
        assert_eq!(e.recording_ids(), vec![RecordingId::from("44444444")]);
        assert_eq!(e.parties[0].from.name.as_deref(), Some("John Smith"));
        assert!(e.parties[0].inbound);
        assert!(!e.ended(), "Answered is not the end");
        assert_eq!(SessionEvent::from_json(&v["body"]).unwrap(), e, "the body alone");
        assert!(SessionEvent::from_json(&json!({"body": {"sequence": 1}})).is_err());
    }

    #[test]
    fn a_disconnect_with_a_reason_is_not_the_end() {
        let ev = |status: Value| {
            SessionEvent::from_json(&json!({"sessionId": "1", "parties": [{"status": status}]}))
                .unwrap()
        };
        assert!(ev(json!({"code": "Disconnected"})).ended());
        assert!(ev(json!({"code": "Disconnected", "reason": ""})).ended());
        assert!(!ev(json!({"code": "Disconnected", "reason": "BlindTransfer"})).ended());
        assert!(!ev(json!({"code": "Proceeding"})).ended());
    }

    #[test]
    fn ids_are_their_text() {
        let a = RecordingId::from("44444444");
        assert_eq!(a.as_str(), "44444444");
        assert_eq!(a.to_string(), "44444444");
        assert_eq!(a, RecordingId::from(String::from("44444444")));
        let (one, two) = (SessionId::from("1"), SessionId::from("2"));
        assert!(one < two, "ordered as text");
    }
}
