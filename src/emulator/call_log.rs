//! The call log: account and extension level, pages of records and single records.
//!
//! Queries are checked as the real service checks them (400 `CMN-101` naming the parameter). A
//! record shows once `record_delay` has passed after its call ended; pages are newest first,
//! ties broken by call-log id so that paging is stable, and carry the service's `paging` and
//! `navigation`. Records are serialized straight into the page's bytes. Two faults act here:
//! `page_overlap` moves where later pages start, `malformed_json_fraction` cuts a page in half.

// Handlers answer `Result<_, Response>`: the error *is* the HTTP answer (a RingCentral error body),
// and the emulator is not a hot path where the size of `Err` matters.
#![allow(clippy::result_large_err)]

use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use super::data::{ACCOUNT_ID, Call, EXTENSIONS, OWNER_EXTENSION_ID, Party, RecordingKind};
use super::reply::{not_found, param_error, rc_error};
use super::state::{Group, Shared, State, account_ok, bases, fmt_ms, now_ms};

/// A validated call-log query.
#[derive(Debug)]
struct CallLogQuery {
    date_from: i64,
    date_to: i64,
    /// `None`: no filter; `Some(None)`: any recording; `Some(Some(k))`: recordings of kind `k`.
    recording: Option<Option<RecordingKind>>,
    voice: bool,
    directions: Vec<bool>,
    session_id: Option<String>,
    telephony_session_id: Option<String>,
    extension_number: Option<String>,
    phone_number: Option<String>,
    detailed: bool,
    page: u64,
    per_page: u64,
    /// The query minus `page` and `perPage`, for the navigation URIs.
    rest: Vec<(String, String)>,
}

fn parse_time(v: &str) -> Option<i64> {
    if let Ok(t) = v.parse::<jiff::Timestamp>() {
        return Some(t.as_millisecond());
    }
    // Without a zone: UTC (dates mean midnight).
    let dt = v.parse::<jiff::civil::DateTime>().ok().or_else(|| {
        v.parse::<jiff::civil::Date>()
            .ok()
            .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
    })?;
    dt.to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp().as_millisecond())
}

fn parse_call_log_query(raw: Option<&str>, now: i64) -> Result<CallLogQuery, Response> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let one = |name: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let time = |name: &str| -> Result<Option<i64>, Response> {
        one(name)
            .map(|v| parse_time(v).ok_or_else(|| param_error(name, v)))
            .transpose()
    };
    let bool_param = |name: &str| -> Result<Option<bool>, Response> {
        one(name)
            .map(|v| match v {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(param_error(name, v)),
            })
            .transpose()
    };
    let date_to = time("dateTo")?.unwrap_or(now);
    let date_from = time("dateFrom")?.unwrap_or(date_to - 86_400_000);
    let recording = match one("recordingType") {
        Some("All") => Some(None),
        Some("Automatic") => Some(Some(RecordingKind::Automatic)),
        Some("OnDemand") => Some(Some(RecordingKind::OnDemand)),
        Some(v) => return Err(param_error("recordingType", v)),
        None => match bool_param("withRecording")? {
            Some(true) => Some(None),
            _ => None,
        },
    };
    let _ = bool_param("showDeleted")?;
    let mut types = Vec::new();
    let mut directions = Vec::new();
    for (k, v) in &pairs {
        match (k.as_str(), v.as_str()) {
            ("type", "Voice" | "Fax") => types.push(v.as_str()),
            ("type", _) => return Err(param_error("type", v)),
            ("direction", "Inbound") => directions.push(true),
            ("direction", "Outbound") => directions.push(false),
            ("direction", _) => return Err(param_error("direction", v)),
            _ => {}
        }
    }
    let detailed = match one("view") {
        None | Some("Simple") => false,
        Some("Detailed") => true,
        Some(v) => return Err(param_error("view", v)),
    };
    let page = match one("page") {
        None => 1,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|&p| p >= 1)
            .ok_or_else(|| param_error("page", v))?,
    };
    // `max` is documented for perPage; it is taken as the maximum, 1000 (no larger pages).
    let per_page = match one("perPage") {
        None => 100,
        Some("max") => 1000,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|p| (1..=1000).contains(p))
            .ok_or_else(|| param_error("perPage", v))?,
    };
    let rest = pairs
        .iter()
        .filter(|(k, _)| k != "page" && k != "perPage")
        .cloned()
        .collect();
    Ok(CallLogQuery {
        date_from,
        date_to,
        recording,
        voice: types.is_empty() || types.contains(&"Voice"),
        directions,
        session_id: one("sessionId").map(String::from),
        telephony_session_id: one("telephonySessionId").map(String::from),
        extension_number: one("extensionNumber").map(String::from),
        phone_number: one("phoneNumber").map(String::from),
        detailed,
        page,
        per_page,
        rest,
    })
}

impl CallLogQuery {
    fn matches(&self, c: &Call) -> bool {
        if c.start_ms < self.date_from || c.start_ms >= self.date_to || !self.voice {
            return false;
        }
        match (&self.recording, &c.recording) {
            (None, _) => {}
            (Some(_), None) => return false,
            (Some(Some(kind)), Some(r)) if r.kind != *kind => return false,
            _ => {}
        }
        if !self.directions.is_empty() && !self.directions.contains(&c.inbound) {
            return false;
        }
        if self.session_id.as_ref().is_some_and(|s| *s != c.session_id) {
            return false;
        }
        if self
            .telephony_session_id
            .as_ref()
            .is_some_and(|s| *s != c.telephony_session_id)
        {
            return false;
        }
        if self
            .extension_number
            .as_ref()
            .is_some_and(|n| n != c.extension().number)
        {
            return false;
        }
        if let Some(n) = &self.phone_number {
            let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
            let want = digits(n);
            let hit = [&c.from, &c.to].iter().any(|p| {
                p.phone_number
                    .as_deref()
                    .is_some_and(|pn| !want.is_empty() && digits(pn).contains(&want))
            });
            if !hit {
                return false;
            }
        }
        true
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PartyOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    phone_number: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extension_number: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extension_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<&'a str>,
}

impl<'a> From<&'a Party> for PartyOut<'a> {
    fn from(p: &'a Party) -> Self {
        PartyOut {
            phone_number: p.phone_number.as_deref(),
            extension_number: p.extension_number,
            extension_id: p.extension_id,
            name: p.name.as_deref(),
            location: p.location,
        }
    }
}

#[derive(Serialize)]
struct ExtensionOut {
    uri: String,
    id: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RecordingOut<'a> {
    uri: String,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    content_uri: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LegOut<'a> {
    start_time: &'a str,
    duration: u32,
    duration_ms: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    direction: &'static str,
    action: &'static str,
    result: &'static str,
    reason: &'static str,
    reason_description: &'static str,
    from: PartyOut<'a>,
    to: PartyOut<'a>,
    extension: &'a ExtensionOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    recording: Option<&'a RecordingOut<'a>>,
    leg_type: &'static str,
    master: bool,
    telephony_session_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RecordOut<'a> {
    uri: String,
    id: &'a str,
    session_id: &'a str,
    telephony_session_id: &'a str,
    start_time: &'a str,
    duration: u32,
    duration_ms: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    direction: &'static str,
    action: &'static str,
    result: &'static str,
    reason: &'static str,
    reason_description: &'static str,
    from: PartyOut<'a>,
    to: PartyOut<'a>,
    extension: &'a ExtensionOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    recording: Option<&'a RecordingOut<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    short_recording: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_modified_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    legs: Option<Vec<LegOut<'a>>>,
}

/// Serializes one record (and its legs in the Detailed view) into `out`.
fn write_record(
    st: &State,
    c: &Call,
    account_level: bool,
    detailed: bool,
    api: &str,
    media: &str,
    out: &mut Vec<u8>,
) {
    let ext = c.extension();
    let start = fmt_ms(c.start_ms);
    if c.sparse {
        let mut v = json!({"id": c.call_log_id, "sessionId": c.session_id, "startTime": start});
        if let Some(r) = &c.recording {
            v["recording"] = json!({
                "id": r.id,
                "contentUri": format!("{media}/restapi/v1.0/account/{ACCOUNT_ID}/recording/{}/content", r.id),
            });
        }
        let _ = serde_json::to_writer(out, &v);
        return;
    }
    let extension = ExtensionOut {
        uri: format!(
            "{api}/restapi/v1.0/account/{ACCOUNT_ID}/extension/{}",
            ext.id
        ),
        id: ext.id.parse().unwrap_or(0),
    };
    let recording = c.recording.as_ref().map(|r| RecordingOut {
        uri: format!("{api}/restapi/v1.0/account/{ACCOUNT_ID}/recording/{}", r.id),
        id: &r.id,
        kind: r.kind.as_str(),
        content_uri: format!(
            "{media}/restapi/v1.0/account/{ACCOUNT_ID}/recording/{}/content",
            r.id
        ),
    });
    let direction = if c.inbound { "Inbound" } else { "Outbound" };
    let action = if c.inbound { "Phone Call" } else { "VoIP Call" };
    let internal = c.from.phone_number.is_none() || c.to.phone_number.is_none();
    let leg = |master: bool| LegOut {
        start_time: &start,
        duration: c.duration_s,
        duration_ms: u64::from(c.duration_s) * 1000,
        kind: "Voice",
        direction,
        action,
        result: c.outcome.result(),
        reason: c.outcome.reason(),
        reason_description: c.outcome.description(),
        from: (&c.from).into(),
        to: (&c.to).into(),
        extension: &extension,
        recording: if master { recording.as_ref() } else { None },
        leg_type: match (master, internal, c.inbound) {
            (false, ..) => "FindMe",
            (true, true, _) => "Accept",
            (true, false, true) => "PstnToSip",
            (true, false, false) => "SipToPstnMetered",
        },
        master,
        telephony_session_id: &c.telephony_session_id,
    };
    let legs = detailed.then(|| {
        let mut legs = vec![leg(true)];
        if c.two_legs {
            legs.push(leg(false));
        }
        legs
    });
    let uri = if account_level {
        format!(
            "{api}/restapi/v1.0/account/{ACCOUNT_ID}/call-log/{}?view={}",
            c.call_log_id,
            view_name(detailed)
        )
    } else {
        format!(
            "{api}/restapi/v1.0/account/{ACCOUNT_ID}/extension/{}/call-log/{}?view={}",
            ext.id,
            c.call_log_id,
            view_name(detailed)
        )
    };
    let record = RecordOut {
        uri,
        id: &c.call_log_id,
        session_id: &c.session_id,
        telephony_session_id: &c.telephony_session_id,
        start_time: &start,
        duration: c.duration_s,
        duration_ms: u64::from(c.duration_s) * 1000,
        kind: "Voice",
        direction,
        action,
        result: c.outcome.result(),
        reason: c.outcome.reason(),
        reason_description: c.outcome.description(),
        from: (&c.from).into(),
        to: (&c.to).into(),
        extension: &extension,
        recording: recording.as_ref(),
        short_recording: c.short_recording,
        last_modified_time: detailed.then(|| fmt_ms(st.visible_ms(c))),
        legs,
    };
    // Serializing plain structs into a Vec cannot fail.
    let _ = serde_json::to_writer(out, &record);
}

fn view_name(detailed: bool) -> &'static str {
    if detailed { "Detailed" } else { "Simple" }
}

/// Which call log a request reads.
#[derive(Clone, Copy)]
enum Scope {
    Account,
    Extension(usize),
}

fn page_uri(base_path: &str, rest: &[(String, String)], page: u64, per_page: u64) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in rest {
        s.append_pair(k, v);
    }
    s.append_pair("page", &page.to_string());
    s.append_pair("perPage", &per_page.to_string());
    format!("{base_path}?{}", s.finish())
}

fn call_log_page(
    st: &State,
    scope: Scope,
    headers: &HeaderMap,
    path: &str,
    raw: Option<&str>,
) -> Response {
    let now = now_ms();
    let q = match parse_call_log_query(raw, now) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let (api, media) = bases(st, headers);
    let data = st.data.read().unwrap_or_else(|e| e.into_inner());
    let mut hits: Vec<(i64, usize)> = data
        .calls
        .iter()
        .enumerate()
        .filter(|(_, c)| st.visible_ms(c) <= now)
        .filter(|(_, c)| match scope {
            Scope::Account => true,
            Scope::Extension(owner) => c.owner == owner,
        })
        .filter(|(_, c)| q.matches(c))
        .map(|(i, c)| (c.start_ms, i))
        .collect();
    // Newest first; ties broken by call-log id so pages are stable.
    hits.sort_unstable_by(|a, b| {
        b.0.cmp(&a.0).then_with(|| {
            data.calls[a.1]
                .call_log_id
                .cmp(&data.calls[b.1].call_log_id)
        })
    });
    let total = hits.len() as u64;
    let overlap = if q.page > 1 {
        st.faults().page_overlap
    } else {
        0
    };
    let first = (q.page - 1)
        .saturating_mul(q.per_page)
        .saturating_sub(overlap);
    let page_hits = hits
        .iter()
        .skip(first.min(total) as usize)
        .take(q.per_page as usize);
    let account_level = matches!(scope, Scope::Account);

    let mut out = Vec::with_capacity(1024 + q.per_page.min(total) as usize * 1400);
    out.extend_from_slice(b"{\"uri\":");
    let base_path = format!("{api}{path}");
    let _ = serde_json::to_writer(&mut out, &page_uri(&base_path, &q.rest, q.page, q.per_page));
    out.extend_from_slice(b",\"records\":[");
    let mut n = 0u64;
    for &(_, i) in page_hits {
        if n > 0 {
            out.push(b',');
        }
        write_record(
            st,
            &data.calls[i],
            account_level,
            q.detailed,
            &api,
            &media,
            &mut out,
        );
        n += 1;
    }
    drop(data);
    out.extend_from_slice(b"],\"paging\":");
    let mut paging = json!({"page": q.page, "perPage": q.per_page});
    if n > 0 {
        paging["pageStart"] = json!(first);
        paging["pageEnd"] = json!(first + n - 1);
    }
    let _ = serde_json::to_writer(&mut out, &paging);
    let last_page = total.div_ceil(q.per_page).max(1);
    let mut nav = serde_json::Map::new();
    let link = |p: u64| json!({"uri": page_uri(&base_path, &q.rest, p, q.per_page)});
    nav.insert("firstPage".into(), link(1));
    if first + n < total {
        nav.insert("nextPage".into(), link(q.page + 1));
    }
    if q.page > 1 {
        nav.insert("previousPage".into(), link((q.page - 1).min(last_page)));
    }
    nav.insert("lastPage".into(), link(last_page));
    out.extend_from_slice(b",\"navigation\":");
    let _ = serde_json::to_writer(&mut out, &nav);
    out.push(b'}');

    if st.roll(st.faults().malformed_json_fraction) {
        st.fault_injected();
        out.truncate(out.len() / 2);
        tracing::debug!("malformed call-log page injected");
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
        out,
    )
        .into_response()
}

fn call_log_record(
    st: &State,
    scope: Scope,
    id: &str,
    headers: &HeaderMap,
    raw: Option<&str>,
) -> Response {
    let detailed = match raw
        .and_then(|r| url::form_urlencoded::parse(r.as_bytes()).find(|(k, _)| k == "view"))
    {
        None => false,
        Some((_, v)) if v == "Simple" => false,
        Some((_, v)) if v == "Detailed" => true,
        Some((_, v)) => return param_error("view", &v),
    };
    let (api, media) = bases(st, headers);
    let now = now_ms();
    let data = st.data.read().unwrap_or_else(|e| e.into_inner());
    let found = data.calls.iter().find(|c| {
        c.call_log_id == id
            && st.visible_ms(c) <= now
            && match scope {
                Scope::Account => true,
                Scope::Extension(o) => c.owner == o,
            }
    });
    let Some(call) = found else {
        return not_found("callRecordId", id);
    };
    let mut out = Vec::with_capacity(2048);
    write_record(
        st,
        call,
        matches!(scope, Scope::Account),
        detailed,
        &api,
        &media,
        &mut out,
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
        out,
    )
        .into_response()
}

/// Resolves `{accountId}/extension/{extensionId}`; `Err` is the answer.
fn extension_scope(st: &State, account: &str, ext: &str) -> Result<Scope, Response> {
    if !account_ok(account) {
        return Err(not_found("accountId", account));
    }
    let id = if ext == "~" { OWNER_EXTENSION_ID } else { ext };
    let Some(index) = EXTENSIONS.iter().position(|e| e.id == id) else {
        return Err(not_found("extensionId", ext));
    };
    if index != 0 && !st.cfg.admin {
        return Err(permission_denied());
    }
    Ok(Scope::Extension(index))
}

fn permission_denied() -> Response {
    rc_error(
        StatusCode::FORBIDDEN,
        "CMN-408",
        "In order to call this API endpoint, user needs to have [ReadCompanyCallLog] permission for requested resource.",
    )
}

pub(super) async fn account_call_log(
    AxState(st): AxState<Shared>,
    Path(account): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    RawQuery(q): RawQuery,
) -> Response {
    st.gated("account-call-log", Group::Heavy, || {
        if let Err(r) = st.authorize(&headers, None) {
            return r;
        }
        if !account_ok(&account) {
            return not_found("accountId", &account);
        }
        if !st.cfg.admin {
            return permission_denied();
        }
        call_log_page(&st, Scope::Account, &headers, uri.path(), q.as_deref())
    })
}

pub(super) async fn account_call_log_record(
    AxState(st): AxState<Shared>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    st.gated("account-call-log", Group::Heavy, || {
        if let Err(r) = st.authorize(&headers, None) {
            return r;
        }
        if !account_ok(&account) {
            return not_found("accountId", &account);
        }
        if !st.cfg.admin {
            return permission_denied();
        }
        call_log_record(&st, Scope::Account, &id, &headers, q.as_deref())
    })
}

pub(super) async fn extension_call_log(
    AxState(st): AxState<Shared>,
    Path((account, ext)): Path<(String, String)>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    RawQuery(q): RawQuery,
) -> Response {
    st.gated("extension-call-log", Group::Heavy, || {
        if let Err(r) = st.authorize(&headers, None) {
            return r;
        }
        match extension_scope(&st, &account, &ext) {
            Ok(scope) => call_log_page(&st, scope, &headers, uri.path(), q.as_deref()),
            Err(r) => r,
        }
    })
}

pub(super) async fn extension_call_log_record(
    AxState(st): AxState<Shared>,
    Path((account, ext, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    st.gated("extension-call-log", Group::Heavy, || {
        if let Err(r) = st.authorize(&headers, None) {
            return r;
        }
        match extension_scope(&st, &account, &ext) {
            Ok(scope) => call_log_record(&st, scope, &id, &headers, q.as_deref()),
            Err(r) => r,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-01T00:00:01.500Z"), Some(1500));
        assert_eq!(parse_time("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(fmt_ms(1500), "1970-01-01T00:00:01.500Z");
    }
}
