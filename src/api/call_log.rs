//! The call-log endpoints: recorded calls of a time span, page by page or all at once, and the
//! records of one call session.
//!
//! Every query is built by [`query`] and every page after the first is reached through
//! [`next_page`], which refuses a `navigation.nextPage` on another host: the request carries the
//! bearer token, which must never leave the API server. A page's broken records are skipped
//! (and counted), not fatal; the media host is learned from the first recording of each page.

use std::collections::HashSet;

use jiff::Timestamp;
use serde_json::Value;

use super::error::ApiError;
use super::pacer::RateGroup;
use super::recordings::MediaHost;
use super::transport::{Req, Transport};
use super::{Priority, Scope};
use crate::model::{CallLogPage, CallRecord};

/// Records per page; the service's maximum.
const PER_PAGE: &str = "1000";

/// ISO 8601 with milliseconds and `Z`, as the call log expects.
fn iso(ts: Timestamp) -> String {
    format!("{ts:.3}")
}

/// Which records a query asks for.
#[derive(Clone, Copy, Debug)]
enum Filter<'a> {
    /// Calls with a recording (`recordingType=All`).
    Recorded,
    /// The records of one call session, recorded or not (`sessionId`).
    Session(&'a str),
}

/// The query of a first page: `[from, to)`, the Detailed view (legs included), full pages.
fn query(filter: Filter<'_>, from: Timestamp, to: Timestamp) -> Vec<(&'static str, String)> {
    let mut q = Vec::with_capacity(5);
    if let Filter::Session(id) = filter {
        q.push(("sessionId", id.to_owned()));
    }
    q.push(("dateFrom", iso(from)));
    q.push(("dateTo", iso(to)));
    if let Filter::Recorded = filter {
        q.push(("recordingType", "All".to_owned()));
    }
    q.push(("view", "Detailed".to_owned()));
    q.push(("perPage", PER_PAGE.to_owned()));
    q
}

/// A first-page request of the call log of `scope`.
fn request(
    transport: &Transport,
    scope: Scope,
    query: Vec<(&'static str, String)>,
    context: String,
) -> Req {
    let url = match scope {
        Scope::Account => format!("{}/restapi/v1.0/account/~/call-log", transport.server()),
        Scope::Extension => {
            format!(
                "{}/restapi/v1.0/account/~/extension/~/call-log",
                transport.server()
            )
        }
    };
    let mut req = Req::get(url, RateGroup::Heavy, context);
    req.query = query;
    req
}

/// Resolves a `navigation.nextPage` URI against the server and checks that it stays there.
fn next_page(server: &str, next: &str, context: &str) -> Result<url::Url, ApiError> {
    let server_origin = url::Url::parse(server).map(|u| u.origin()).ok();
    let url = url::Url::parse(server)
        .and_then(|base| base.join(next))
        .map_err(|e| ApiError::Decode {
            context: context.to_owned(),
            detail: format!("bad nextPage uri: {e}"),
        })?;
    if Some(url.origin()) != server_origin {
        // The bearer token must not go to another host.
        return Err(ApiError::Decode {
            context: context.to_owned(),
            detail: format!(
                "nextPage points to another host: {}",
                url.origin().ascii_serialization()
            ),
        });
    }
    Ok(url)
}

/// Parses a call-log page, with how many records were skipped as broken. A page without a
/// `records` array is an error; broken records are logged and skipped.
fn parse_page(body: &Value) -> Result<(CallLogPage, u64), String> {
    let records = body
        .get("records")
        .and_then(Value::as_array)
        .ok_or("page has no records array")?;
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
    Ok((CallLogPage { records: out, next }, skipped))
}

/// Sends `req` and reads one page; `decode_context` names it in a decoding error.
async fn read_page(
    transport: &Transport,
    media: &MediaHost,
    req: &Req,
    decode_context: String,
    prio: Priority,
) -> Result<CallLogPage, ApiError> {
    let v = transport.get_json(req, prio).await?;
    let (page, skipped) = parse_page(&v).map_err(|detail| ApiError::Decode {
        context: decode_context,
        detail,
    })?;
    transport.note_skipped(skipped);
    if let Some(r) = page
        .records
        .iter()
        .flat_map(|r| r.recordings.first())
        .next()
    {
        media.learn(&r.content_uri);
    }
    Ok(page)
}

/// Every page of the query `first` starts, followed through `navigation.nextPage` until the
/// last page (or a page that points back to one already read).
async fn all_pages(
    transport: &Transport,
    media: &MediaHost,
    first: Req,
    prio: Priority,
) -> Result<Vec<CallRecord>, ApiError> {
    let mut req = first;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for page_no in 1.. {
        let context = format!("{} page {page_no}", req.context);
        let page = read_page(transport, media, &req, context, prio).await?;
        tracing::debug!(context = %req.context, page = page_no, records = page.records.len(), "call log page");
        out.extend(page.records);
        let Some(next) = page.next else { break };
        let next = next_page(transport.server(), &next, &req.context)?;
        if !seen.insert(next.to_string()) {
            tracing::warn!(context = %req.context, "call log: nextPage repeats; stopping");
            break;
        }
        req.url = next.to_string();
        req.query.clear();
    }
    Ok(out)
}

/// Every call-log record with a recording in `[from, to)`, all pages.
pub(crate) async fn recorded(
    transport: &Transport,
    media: &MediaHost,
    scope: Scope,
    from: Timestamp,
    to: Timestamp,
    prio: Priority,
) -> Result<Vec<CallRecord>, ApiError> {
    let context = format!("GET {} call log", scope.name());
    let req = request(transport, scope, query(Filter::Recorded, from, to), context);
    all_pages(transport, media, req, prio).await
}

/// One page of the recorded-calls query for `[from, to)`, or with `next` the page of an earlier
/// query it names. Returns the records and the next page's URI, if any.
pub(crate) async fn recorded_page(
    transport: &Transport,
    media: &MediaHost,
    scope: Scope,
    from: Timestamp,
    to: Timestamp,
    next: Option<&str>,
    prio: Priority,
) -> Result<CallLogPage, ApiError> {
    let context = format!("GET {} call log", scope.name());
    let req = match next {
        Some(uri) => {
            let mut req = request(transport, scope, Vec::new(), context);
            req.url = next_page(transport.server(), uri, &req.context)?.to_string();
            req
        }
        None => request(transport, scope, query(Filter::Recorded, from, to), context),
    };
    read_page(transport, media, &req, req.context.clone(), prio).await
}

/// The records of one call session (`sessionId`), searching from `date_from` until now.
pub(crate) async fn session(
    transport: &Transport,
    media: &MediaHost,
    scope: Scope,
    session_id: &str,
    date_from: Timestamp,
    prio: Priority,
) -> Result<Vec<CallRecord>, ApiError> {
    let context = format!("GET {} call log for session {session_id}", scope.name());
    let q = query(Filter::Session(session_id), date_from, Timestamp::now());
    let req = request(transport, scope, q, context);
    all_pages(transport, media, req, prio).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn iso_format() {
        let t: Timestamp = "2024-03-08T10:11:12.3456Z".parse().unwrap();
        assert_eq!(iso(t), "2024-03-08T10:11:12.345Z");
        let t: Timestamp = "2024-03-08T10:11:12Z".parse().unwrap();
        assert_eq!(iso(t), "2024-03-08T10:11:12.000Z");
    }

    #[test]
    fn queries() {
        let from: Timestamp = "2024-03-01T00:00:00Z".parse().unwrap();
        let to: Timestamp = "2024-03-08T00:00:00Z".parse().unwrap();
        let names =
            |q: Vec<(&'static str, String)>| q.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            names(query(Filter::Recorded, from, to)),
            ["dateFrom", "dateTo", "recordingType", "view", "perPage"]
        );
        let q = query(Filter::Session("42"), from, to);
        assert_eq!(q[0], ("sessionId", "42".to_owned()));
        assert_eq!(q[1], ("dateFrom", "2024-03-01T00:00:00.000Z".to_owned()));
        assert_eq!(
            names(q),
            ["sessionId", "dateFrom", "dateTo", "view", "perPage"]
        );
    }

    #[test]
    fn next_page_stays_on_the_server() {
        let server = "https://platform.example";
        let u = next_page(server, "/restapi/v1.0/account/~/call-log?page=2", "ctx").unwrap();
        assert_eq!(
            u.as_str(),
            "https://platform.example/restapi/v1.0/account/~/call-log?page=2"
        );
        assert!(next_page(server, "https://platform.example/x?page=3", "ctx").is_ok());
        let e = next_page(server, "https://evil.example/x?page=2", "ctx").unwrap_err();
        assert!(e.to_string().contains("another host"), "{e}");
        assert!(
            next_page(server, "http://platform.example/x", "ctx").is_err(),
            "scheme is part of the origin"
        );
    }

    #[test]
    fn page_skips_broken_records_and_keeps_the_rest() {
        let page = json!({
            "records": [
                {"id": "ok1", "sessionId": "1", "startTime": "2024-03-08T10:00:00Z",
                 "recording": {"id": "900", "contentUri": "https://media.example/r/900/content"}},
                {"id": "no-session", "startTime": "2024-03-08T10:11:12Z"},
                {"id": "bad-time", "sessionId": "1", "startTime": "yesterday"},
                "not an object",
                {"id": "ok2", "sessionId": "2", "startTime": "2024-03-08T09:00:00Z"}
            ],
            "navigation": {"nextPage": {"uri": "https://platform.example/next?page=2"}}
        });
        let (p, skipped) = parse_page(&page).unwrap();
        assert_eq!(p.records.len(), 2);
        assert_eq!(skipped, 3);
        assert_eq!(
            p.next.as_deref(),
            Some("https://platform.example/next?page=2")
        );
        let (last, _) = parse_page(&json!({"records": [], "navigation": {}})).unwrap();
        assert!(last.next.is_none() && last.records.is_empty());
        assert!(parse_page(&json!({"paging": {}})).is_err());
        assert!(parse_page(&json!([1, 2])).is_err());
    }
}
