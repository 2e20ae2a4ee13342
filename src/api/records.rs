//! Lenient parsing of call-log records and recording metadata.
//!
//! The call log is the service's data, not ours: unknown fields are ignored, optional fields may
//! be missing, and one broken record is logged and skipped without losing the rest of its page.
//! A record is *broken* when it lacks what ringfs cannot do without: `id`, `sessionId` and a
//! parseable `startTime`. Recordings are collected from the record and from every leg
//! (Detailed view) and deduplicated by recording id, because one recording can appear in several
//! legs.

use serde_json::Value;

/// One call-log record.
#[derive(Clone, Debug)]
pub struct CallRecord {
    /// The record id.
    pub id: String,
    /// `sessionId`: the call session; ringfs names directories after it.
    pub session_id: String,
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
    /// `recording.id`: the stable key of the recording.
    pub id: String,
    /// Absolute URL of the content on the media host.
    pub content_uri: String,
}

/// `GET /restapi/v1.0/account/~/recording/{id}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingMeta {
    /// Recording id.
    pub id: String,
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
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.round() as u64)),
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
    Some(RecordingRef { id: string_of(v.get("id"))?, content_uri: string_of(v.get("contentUri"))? })
}

impl CallRecord {
    /// Parses one record; `Err` says what made it unusable.
    pub fn from_json(raw: &Value) -> Result<CallRecord, String> {
        if !raw.is_object() {
            return Err("record is not an object".into());
        }
        let id = string_of(raw.get("id")).ok_or("missing id")?;
        let session_id = string_of(raw.get("sessionId")).ok_or_else(|| format!("record {id}: missing sessionId"))?;
        let start = raw.get("startTime").and_then(Value::as_str).ok_or_else(|| format!("record {id}: missing startTime"))?;
        let start_time: jiff::Timestamp =
            start.parse().map_err(|e| format!("record {id}: bad startTime {start:?}: {e}"))?;
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
            session_id,
        })
    }
}

impl RecordingMeta {
    /// Parses the metadata answer; `id` and `contentUri` are required.
    pub fn from_json(v: &Value) -> Result<RecordingMeta, String> {
        let id = string_of(v.get("id")).ok_or("missing id")?;
        let content_uri = string_of(v.get("contentUri")).ok_or_else(|| format!("recording {id}: missing contentUri"))?;
        Ok(RecordingMeta {
            id,
            content_uri,
            content_type: string_of(v.get("contentType")),
            duration: u64_of(v.get("duration")),
        })
    }
}

/// One parsed call-log page.
#[derive(Debug)]
pub(crate) struct Page {
    /// The usable records.
    pub records: Vec<CallRecord>,
    /// How many records were skipped as broken.
    pub skipped: u64,
    /// `navigation.nextPage.uri`.
    pub next: Option<String>,
}

/// Parses a call-log page. A page without a `records` array is an error; broken records are
/// logged and skipped.
pub(crate) fn parse_page(body: &Value) -> Result<Page, String> {
    let records = body.get("records").and_then(Value::as_array).ok_or("page has no records array")?;
    let mut out = Vec::with_capacity(records.len());
    let mut skipped = 0;
    for r in records {
        match CallRecord::from_json(r) {
            Ok(rec) => out.push(rec),
            Err(why) => {
                skipped += 1;
                tracing::warn!("call log: skipping a broken record: {why}");
            }
        }
    }
    let next = body
        .get("navigation")
        .and_then(|n| n.get("nextPage"))
        .and_then(|n| n.get("uri"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    Ok(Page { records: out, skipped, next })
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
        assert_eq!(r.start_time, "2024-03-08T10:11:12.345Z".parse::<jiff::Timestamp>().unwrap());
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
    fn page_skips_broken_records_and_keeps_the_rest() {
        let page = json!({
            "records": [
                full_record(),
                {"id": "no-session", "startTime": "2024-03-08T10:11:12Z"},
                {"id": "bad-time", "sessionId": "1", "startTime": "yesterday"},
                "not an object",
                {"id": "ok2", "sessionId": "2", "startTime": "2024-03-08T09:00:00Z"}
            ],
            "navigation": {"nextPage": {"uri": "https://platform.example/next?page=2"}}
        });
        let p = parse_page(&page).unwrap();
        assert_eq!(p.records.len(), 2);
        assert_eq!(p.skipped, 3);
        assert_eq!(p.next.as_deref(), Some("https://platform.example/next?page=2"));
        let last = parse_page(&json!({"records": [], "navigation": {}})).unwrap();
        assert!(last.next.is_none() && last.records.is_empty());
        assert!(parse_page(&json!({"paging": {}})).is_err());
        assert!(parse_page(&json!([1, 2])).is_err());
    }

    #[test]
    fn parses_recording_meta() {
        let m = RecordingMeta::from_json(&json!({"id": "9", "contentUri": "https://m/9", "contentType": "audio/x-wav", "duration": 31})).unwrap();
        assert_eq!(m.content_type.as_deref(), Some("audio/x-wav"));
        assert_eq!(m.duration, Some(31));
        assert!(RecordingMeta::from_json(&json!({"id": "9"})).is_err());
        assert!(RecordingMeta::from_json(&json!("x")).is_err());
    }
}
