//! The RingCentral emulator through a real HTTP client, in-process, with short TTLs and windows.

use std::time::Duration;

use reqwest::StatusCode;
use ringfs::emulator::{
    AudioFormat, CallInfo, Config, Emulator, Faults, MediaBehaviour, MediaQuirks, PastEnd,
    RangeMode, RateLimits, Stats,
};
use serde_json::Value;

const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A small account without rate limits. The long record delay keeps calls from turning visible
/// while a test compares two listings (the "just ended" call shows `record_delay / 2` after start).
fn config() -> Config {
    Config {
        calls: 120,
        rate: RateLimits::unlimited(),
        record_delay: Duration::from_secs(120),
        ..Config::default()
    }
}

async fn start(config: Config) -> Emulator {
    Emulator::start(config).await.expect("emulator starts")
}

fn http() -> reqwest::Client {
    ringfs::api::http_client_builder()
        .no_proxy()
        .build()
        .expect("client")
}

async fn token_request(emu: &Emulator, form: &[(&str, &str)]) -> reqwest::Response {
    let c = Config::default();
    http()
        .post(format!("{}/restapi/oauth/token", emu.api_url()))
        .basic_auth(&c.client_id, Some(&c.client_secret))
        .form(form)
        .send()
        .await
        .expect("token request")
}

async fn login(emu: &Emulator) -> Value {
    let jwt = Config::default().jwt;
    let r = token_request(emu, &[("grant_type", JWT_GRANT), ("assertion", &jwt)]).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.expect("token json")
}

fn access(tokens: &Value) -> String {
    tokens["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

async fn get(url: &str, token: &str) -> reqwest::Response {
    http()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
}

async fn get_json(url: &str, token: &str) -> (StatusCode, Value) {
    let r = get(url, token).await;
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn error_code(v: &Value) -> &str {
    v["errors"][0]["errorCode"].as_str().unwrap_or("")
}

fn wide(emu: &Emulator, path: &str, extra: &str) -> String {
    format!(
        "{}{path}?dateFrom=2000-01-01T00:00:00.000Z&dateTo=2100-01-01T00:00:00.000Z{extra}",
        emu.api_url()
    )
}

const EXT_LOG: &str = "/restapi/v1.0/account/~/extension/~/call-log";
const ACC_LOG: &str = "/restapi/v1.0/account/~/call-log";

/// Follows `navigation.nextPage` from `url`, returning every record.
async fn all_pages(url: &str, token: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut next = Some(url.to_string());
    let mut pages = 0;
    while let Some(u) = next {
        let (status, page) = get_json(&u, token).await;
        assert_eq!(status, StatusCode::OK, "{u}: {page}");
        out.extend(page["records"].as_array().expect("records").iter().cloned());
        next = page["navigation"]["nextPage"]["uri"]
            .as_str()
            .map(String::from);
        pages += 1;
        assert!(pages < 1000, "paging does not end");
    }
    out
}

fn visible_now(calls: &[CallInfo]) -> Vec<&CallInfo> {
    let now = jiff::Timestamp::now();
    calls.iter().filter(|c| c.visible_at <= now).collect()
}

#[tokio::test]
async fn jwt_login_and_credential_errors() {
    let emu = start(config()).await;
    let tokens = login(&emu).await;
    assert_eq!(tokens["token_type"], "bearer");
    assert_eq!(tokens["expires_in"], 3600);
    assert!(tokens["refresh_token"].is_string());
    assert_eq!(tokens["owner_id"], "22222222");

    // Wrong client secret: 401 invalid_client.
    let r = http()
        .post(format!("{}/restapi/oauth/token", emu.api_url()))
        .basic_auth("ringfs-demo-client", Some("wrong"))
        .form(&[
            ("grant_type", JWT_GRANT),
            ("assertion", Config::default().jwt.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");

    // Wrong JWT: 400 invalid_grant.
    let r = token_request(
        &emu,
        &[("grant_type", JWT_GRANT), ("assertion", "not-the-jwt")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert!(error_code(&body).starts_with("OAU-"));

    // Unsupported grant.
    let r = token_request(&emu, &[("grant_type", "password")]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // No token, garbage token.
    let r = http().get(wide(&emu, EXT_LOG, "")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = get_json(&wide(&emu, EXT_LOG, ""), "garbage").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "OAU-149");

    let (status, _) = get_json(&wide(&emu, EXT_LOG, ""), &access(&tokens)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn refresh_is_single_use_and_replaces_the_access_token() {
    let emu = start(config()).await;
    let first = login(&emu).await;
    let refresh = first["refresh_token"].as_str().unwrap().to_string();
    let r = token_request(
        &emu,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let second: Value = r.json().await.unwrap();
    assert_ne!(second["access_token"], first["access_token"]);

    // The old access token died with the refresh.
    let (status, body) = get_json(&wide(&emu, EXT_LOG, ""), &access(&first)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "OAU-213");
    // The old refresh token is spent.
    let r = token_request(
        &emu,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
    // The new pair works.
    let (status, _) = get_json(&wide(&emu, EXT_LOG, ""), &access(&second)).await;
    assert_eq!(status, StatusCode::OK);

    // Revoke kills the session.
    let c = Config::default();
    let r = http()
        .post(format!("{}/restapi/oauth/revoke", emu.api_url()))
        .basic_auth(&c.client_id, Some(&c.client_secret))
        .form(&[("token", access(&second).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, _) = get_json(&wide(&emu, EXT_LOG, ""), &access(&second)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let r = token_request(
        &emu,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", second["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(emu.stats().endpoint("revoke"), 1);
}

#[tokio::test]
async fn access_tokens_expire_and_refresh_tokens_can_be_disabled() {
    let emu = start(Config {
        access_ttl: Duration::from_millis(1500),
        issue_refresh_tokens: false,
        ..config()
    })
    .await;
    let tokens = login(&emu).await;
    assert!(tokens.get("refresh_token").is_none());
    assert_eq!(tokens["expires_in"], 1, "ttl is reported in whole seconds");
    let (status, _) = get_json(&wide(&emu, EXT_LOG, ""), &access(&tokens)).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (status, body) = get_json(&wide(&emu, EXT_LOG, ""), &access(&tokens)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_code(&body).starts_with("OAU-"));
}

#[tokio::test]
async fn call_log_pages_newest_first_with_absolute_navigation() {
    let emu = start(config()).await;
    let token = access(&login(&emu).await);
    let truth = emu.calls();
    let visible = visible_now(&truth);

    // Extension level: only the user's calls, every visible one exactly once, newest first.
    let url = wide(&emu, EXT_LOG, "&perPage=7");
    let (_, first) = get_json(&url, &token).await;
    assert_eq!(first["paging"]["page"], 1);
    assert_eq!(first["paging"]["perPage"], 7);
    assert_eq!(first["paging"]["pageStart"], 0);
    assert_eq!(first["paging"]["pageEnd"], 6);
    let next = first["navigation"]["nextPage"]["uri"].as_str().unwrap();
    assert!(
        next.starts_with(&emu.api_url()) && next.contains("page=2") && next.contains("perPage=7"),
        "{next}"
    );
    assert!(
        first["navigation"]["firstPage"]["uri"]
            .as_str()
            .unwrap()
            .starts_with("http://")
    );
    assert!(first["uri"].as_str().unwrap().starts_with(&emu.api_url()));

    let records = all_pages(&url, &token).await;
    let mine: Vec<_> = visible
        .iter()
        .filter(|c| c.extension_id == "22222222")
        .collect();
    assert_eq!(records.len(), mine.len());
    assert!(mine.len() > 20);
    let starts: Vec<&str> = records
        .iter()
        .map(|r| r["startTime"].as_str().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[0] >= w[1]), "newest first");
    for r in &records {
        let c = truth
            .iter()
            .find(|c| c.call_log_id == r["id"])
            .expect("record is a known call");
        assert_eq!(c.extension_id, "22222222");
        assert_eq!(r["sessionId"], c.session_id.as_str());
        assert_eq!(r["duration"], c.duration_s);
        assert_eq!(r["durationMs"], c.duration_s * 1000);
        assert_eq!(
            r["direction"],
            if c.inbound { "Inbound" } else { "Outbound" }
        );
        assert_eq!(
            r["startTime"],
            c.start.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
        );
        assert_eq!(r["extension"]["id"], 22222222);
        match &c.recording_id {
            Some(id) => {
                assert_eq!(r["recording"]["id"], id.as_str());
                let uri = r["recording"]["contentUri"].as_str().unwrap();
                assert_eq!(
                    uri,
                    format!(
                        "{}/restapi/v1.0/account/11111111/recording/{id}/content",
                        emu.media_url()
                    )
                );
            }
            None => assert!(r.get("recording").is_none()),
        }
    }

    // Account level: everything visible.
    let records = all_pages(&wide(&emu, ACC_LOG, "&perPage=max"), &token).await;
    assert_eq!(records.len(), visible.len());

    // Page past the end: empty, no nextPage.
    let (status, page) = get_json(&wide(&emu, ACC_LOG, "&page=99"), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["records"].as_array().unwrap().len(), 0);
    assert!(page["navigation"].get("nextPage").is_none());
    assert!(page["paging"].get("pageStart").is_none());
}

#[tokio::test]
async fn call_log_defaults_to_the_last_24_hours_and_filters() {
    let emu = start(config()).await;
    let token = access(&login(&emu).await);
    let truth = emu.calls();
    let now = jiff::Timestamp::now();
    let day_ago = now - jiff::SignedDuration::from_hours(24);

    let records = all_pages(&format!("{}{ACC_LOG}?perPage=1000", emu.api_url()), &token).await;
    let expected = visible_now(&truth)
        .into_iter()
        .filter(|c| c.start >= day_ago)
        .count();
    assert_eq!(records.len(), expected);
    assert!(
        records.iter().any(|r| r["sessionId"] == "1234567890"),
        "the seed call is within the last day"
    );

    // The seed call by session, with the explicit dateFrom the contract asks for.
    let (_, page) = get_json(&wide(&emu, ACC_LOG, "&sessionId=1234567890"), &token).await;
    let recs = page["records"].as_array().unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["recording"]["id"], "44444444");
    assert_eq!(recs[0]["from"]["name"], "John Smith");
    assert_eq!(recs[0]["to"]["phoneNumber"], "+16505550100");
    let tsid = recs[0]["telephonySessionId"].as_str().unwrap().to_string();
    let (_, page) = get_json(
        &wide(&emu, ACC_LOG, &format!("&telephonySessionId={tsid}")),
        &token,
    )
    .await;
    assert_eq!(page["records"][0]["sessionId"], "1234567890");

    // recordingType=All drops calls without recordings; withRecording is the old spelling.
    let all = all_pages(&wide(&emu, ACC_LOG, "&perPage=1000"), &token).await;
    let with = all_pages(
        &wide(&emu, ACC_LOG, "&perPage=1000&recordingType=All"),
        &token,
    )
    .await;
    let old = all_pages(
        &wide(&emu, ACC_LOG, "&perPage=1000&withRecording=true"),
        &token,
    )
    .await;
    assert!(with.len() < all.len());
    assert_eq!(with.len(), old.len());
    assert!(with.iter().all(|r| r["recording"].is_object()));
    let auto = all_pages(
        &wide(&emu, ACC_LOG, "&perPage=1000&recordingType=Automatic"),
        &token,
    )
    .await;
    assert!(auto.iter().all(|r| r["recording"]["type"] == "Automatic"));
    assert!(!auto.is_empty() && auto.len() < with.len());

    // Direction, repeatable.
    let inbound = all_pages(
        &wide(&emu, ACC_LOG, "&perPage=1000&direction=Inbound"),
        &token,
    )
    .await;
    let both = all_pages(
        &wide(
            &emu,
            ACC_LOG,
            "&perPage=1000&direction=Inbound&direction=Outbound",
        ),
        &token,
    )
    .await;
    assert!(inbound.iter().all(|r| r["direction"] == "Inbound"));
    assert_eq!(both.len(), all.len());
    let fax = all_pages(&wide(&emu, ACC_LOG, "&type=Fax"), &token).await;
    assert!(fax.is_empty());

    // Detailed view: legs and lastModifiedTime.
    let (_, page) = get_json(&wide(&emu, ACC_LOG, "&view=Detailed&perPage=5"), &token).await;
    for r in page["records"].as_array().unwrap() {
        assert!(r["lastModifiedTime"].is_string());
        let legs = r["legs"].as_array().unwrap();
        assert_eq!(legs[0]["master"], true);
        assert!(legs[0]["legType"].is_string());
    }
    // Single record by id.
    let id = all[0]["id"].as_str().unwrap();
    let (status, rec) = get_json(&format!("{}{ACC_LOG}/{id}", emu.api_url()), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rec["id"], id);

    // The date-edge calls and the awkward parties exist.
    let sec_of_day = |c: &CallInfo| c.start.as_second().rem_euclid(86_400);
    assert!(truth.iter().any(|c| sec_of_day(c) == 86_370));
    assert!(truth.iter().any(|c| sec_of_day(c) == 10));
    assert!(all.iter().any(
        |r| r["from"]["name"].as_str().is_some_and(|n| n.contains('/'))
            || r["to"]["name"].as_str().is_some_and(|n| n.contains('/'))
    ));
    assert!(all.iter().any(|r| r["from"].get("phoneNumber").is_none()
        && r["from"]["extensionNumber"].is_string()
        || r["to"].get("phoneNumber").is_none() && r["to"]["extensionNumber"].is_string()));
    assert!(truth.iter().any(|c| {
        c.from_number
            .as_deref()
            .is_some_and(|n| n.starts_with("+44"))
            || c.to_number.as_deref().is_some_and(|n| n.starts_with("+44"))
    }));
}

#[tokio::test]
async fn bad_parameters_get_cmn_101() {
    let emu = start(config()).await;
    let token = access(&login(&emu).await);
    for (extra, param) in [
        ("perPage=1001", "perPage"),
        ("perPage=0", "perPage"),
        ("perPage=ten", "perPage"),
        ("page=0", "page"),
        ("dateFrom=yesterday", "dateFrom"),
        ("dateTo=2020-13-45", "dateTo"),
        ("direction=Sideways", "direction"),
        ("view=Fancy", "view"),
        ("recordingType=Sometimes", "recordingType"),
        ("type=Video", "type"),
        ("withRecording=maybe", "withRecording"),
    ] {
        let (status, body) = get_json(&format!("{}{EXT_LOG}?{extra}", emu.api_url()), &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra}");
        assert_eq!(error_code(&body), "CMN-101", "{extra}");
        assert_eq!(body["errors"][0]["parameterName"], param, "{extra}");
    }
    let (status, body) = get_json(
        &format!("{}/restapi/v1.0/account/~/recording/1", emu.api_url()),
        &token,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "CMN-102");
}

#[tokio::test]
async fn non_admin_cannot_read_the_account_call_log() {
    let emu = start(Config {
        admin: false,
        ..config()
    })
    .await;
    let token = access(&login(&emu).await);
    let (status, body) = get_json(&wide(&emu, ACC_LOG, ""), &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error_code(&body).starts_with("CMN-"));
    let (status, _) = get_json(&wide(&emu, EXT_LOG, ""), &token).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn recording_content_ranges_and_availability() {
    let emu = start(config()).await;
    let token = access(&login(&emu).await);
    let truth = emu.calls();
    let seed = truth
        .iter()
        .find(|c| c.recording_id.as_deref() == Some("44444444"))
        .expect("seed call");
    let bytes = emu.recording_bytes("44444444").unwrap();
    assert_eq!(bytes.len() as u64, seed.recording_len.unwrap());

    let (status, meta) = get_json(
        &format!(
            "{}/restapi/v1.0/account/~/recording/44444444",
            emu.api_url()
        ),
        &token,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta["contentType"], "audio/mpeg");
    assert_eq!(meta["duration"], 35);
    let content_uri = meta["contentUri"].as_str().unwrap().to_string();
    assert!(content_uri.starts_with(&emu.media_url()));

    let r = get(&content_uri, &token).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "audio/mpeg");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(
        r.headers()["content-length"],
        bytes.len().to_string().as_str()
    );
    assert_eq!(r.headers()["x-rate-limit-group"], "heavy");
    assert_eq!(r.bytes().await.unwrap(), bytes);

    // access_token in the query instead of a header.
    let r = http()
        .get(format!("{content_uri}?access_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), bytes.len());
    let r = http().get(&content_uri).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Ranges.
    let ranged = |range: String| {
        let (uri, token) = (content_uri.clone(), token.clone());
        async move {
            http()
                .get(uri)
                .bearer_auth(token)
                .header("Range", range)
                .send()
                .await
                .unwrap()
        }
    };
    let r = ranged("bytes=100-299".into()).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 100-299/{}", bytes.len()).as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), bytes[100..300]);
    let r = ranged("bytes=-50".into()).await;
    assert_eq!(r.bytes().await.unwrap(), bytes[bytes.len() - 50..]);
    let r = ranged(format!("bytes={}-", bytes.len() - 10)).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), bytes[bytes.len() - 10..]);
    let r = ranged(format!("bytes={}-", bytes.len())).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", bytes.len()).as_str()
    );
    assert_eq!(error_code(&r.json().await.unwrap()), "CMN-107");

    // Unknown recording, and a recording of a call that has not ended long enough ago.
    let r = get(
        &format!(
            "{}/restapi/v1.0/account/~/recording/999/content",
            emu.media_url()
        ),
        &token,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(&r.json().await.unwrap()), "CMN-102");
    let now = jiff::Timestamp::now();
    let pending = truth
        .iter()
        .find(|c| {
            c.recording_id.is_some() && c.fetchable_at > now + jiff::SignedDuration::from_secs(5)
        })
        .expect("a call whose recording is not fetchable yet");
    let id = pending.recording_id.as_deref().unwrap();
    let r = get(
        &format!(
            "{}/restapi/v1.0/account/~/recording/{id}/content",
            emu.media_url()
        ),
        &token,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(&r.json().await.unwrap()), "CMN-102");
}

#[tokio::test]
async fn records_and_recordings_appear_after_their_delays_and_live_calls_arrive() {
    let test_start = jiff::Timestamp::now();
    let emu = start(Config {
        calls: 20,
        record_delay: Duration::from_millis(300),
        recording_delay: Duration::from_millis(300),
        live: Some(Duration::from_millis(250)),
        ..config()
    })
    .await;
    let token = access(&login(&emu).await);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let truth = emu.calls();
    let now = jiff::Timestamp::now();
    let ended_live: Vec<_> = truth
        .iter()
        .filter(|c| c.end > test_start && c.end <= now)
        .collect();
    assert!(
        ended_live.len() >= 5,
        "a live call ends every 250 ms: {}",
        ended_live.len()
    );
    let records = all_pages(&wide(&emu, ACC_LOG, "&perPage=1000"), &token).await;
    let after = jiff::Timestamp::now();
    let ids: Vec<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let margin = jiff::SignedDuration::from_millis(100);
    for c in &truth {
        if c.visible_at + margin < now {
            assert!(ids.contains(&c.call_log_id.as_str()), "{c:?} is visible");
        } else if c.visible_at > after + margin {
            assert!(
                !ids.contains(&c.call_log_id.as_str()),
                "{c:?} is not visible yet"
            );
        }
    }
    let fetchable = ended_live
        .iter()
        .find(|c| c.recording_id.is_some() && c.fetchable_at + margin < now)
        .expect("a live call's recording is fetchable");
    let id = fetchable.recording_id.as_deref().unwrap();
    let r = get(
        &format!(
            "{}/restapi/v1.0/account/~/recording/{id}/content",
            emu.media_url()
        ),
        &token,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), emu.recording_bytes(id).unwrap());
    let now = jiff::Timestamp::now();
    let unfetchable = truth.iter().find(|c| {
        c.recording_id.is_some()
            && c.visible_at < now
            && c.fetchable_at > now + jiff::SignedDuration::from_secs(2)
    });
    if let Some(c) = unfetchable {
        // Listed, but the recording is still being processed.
        let id = c.recording_id.as_deref().unwrap();
        let r = get(
            &format!(
                "{}/restapi/v1.0/account/~/recording/{id}/content",
                emu.media_url()
            ),
            &token,
        )
        .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn a_fractional_window_is_advertised_rounded_up() {
    // The header is whole seconds; rounding down would tell clients to pace too fast.
    let emu = start(Config {
        rate: RateLimits {
            window: Duration::from_millis(2500),
            ..RateLimits::default()
        },
        ..config()
    })
    .await;
    let token = access(&login(&emu).await);
    let r = get(&wide(&emu, EXT_LOG, "&perPage=1"), &token).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-rate-limit-window"], "3");
}

#[tokio::test]
async fn heavy_limit_penalty_restarts_on_every_request() {
    // A long window and a short penalty: the test does not depend on how fast requests are.
    let emu = start(Config {
        rate: RateLimits {
            window: Duration::from_secs(30),
            penalty: Duration::from_secs(6),
            heavy: 3,
            ..RateLimits::default()
        },
        ..config()
    })
    .await;
    let token = access(&login(&emu).await);
    let url = wide(&emu, EXT_LOG, "&perPage=1");
    for remaining in [2, 1, 0] {
        let r = get(&url, &token).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-rate-limit-group"], "heavy");
        assert_eq!(r.headers()["x-rate-limit-limit"], "3");
        assert_eq!(
            r.headers()["x-rate-limit-remaining"],
            remaining.to_string().as_str()
        );
        assert_eq!(r.headers()["x-rate-limit-window"], "30");
    }
    let r = get(&url, &token).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "6");
    assert_eq!(r.headers()["x-rate-limit-remaining"], "0");
    assert_eq!(error_code(&r.json().await.unwrap()), "CMN-301");
    // Requests during the penalty restart it: at 3.5 s and 7 s both are refused, although
    // 7 s is past the first penalty (a loaded machine has 2.5 s of slack either way).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        get(&url, &token).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        get(&url, &token).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Waiting out Retry-After works, with a fresh window.
    tokio::time::sleep(Duration::from_millis(6100)).await;
    let r = get(&url, &token).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-rate-limit-remaining"], "2");
    let s = emu.stats();
    assert_eq!(s.throttled, 3);
    assert_eq!(s.penalty_violations, 2);
    assert_eq!(s.endpoint("extension-call-log"), 7);
    assert_eq!(s.by_group["Heavy"], 7);
    assert_eq!(s.by_group["Auth"], 1);

    // The Auth group is separate and limited too.
    let emu = start(Config {
        rate: RateLimits {
            window: Duration::from_secs(5),
            auth: 2,
            ..RateLimits::default()
        },
        ..config()
    })
    .await;
    login(&emu).await;
    login(&emu).await;
    let jwt = Config::default().jwt;
    let r = token_request(&emu, &[("grant_type", JWT_GRANT), ("assertion", &jwt)]).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["x-rate-limit-group"], "auth");
}

#[tokio::test]
async fn faults_are_injected_and_can_be_cleared() {
    let emu = start(config()).await;
    let token = access(&login(&emu).await);
    let url = wide(&emu, EXT_LOG, "");
    let content = format!(
        "{}/restapi/v1.0/account/~/recording/44444444/content",
        emu.media_url()
    );
    let bytes = emu.recording_bytes("44444444").unwrap();

    emu.set_faults(Faults {
        error_5xx_fraction: 1.0,
        ..Faults::default()
    });
    for _ in 0..3 {
        let r = get(&url, &token).await;
        assert!(r.status().is_server_error());
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert!(r.headers().contains_key("retry-after"));
        }
    }

    emu.set_faults(Faults {
        force_429_fraction: 1.0,
        ..Faults::default()
    });
    let r = get(&url, &token).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(!r.headers().contains_key("retry-after"));
    emu.set_faults(Faults {
        force_429_fraction: 1.0,
        force_429_retry_after: Some(7),
        ..Faults::default()
    });
    let r = get(&url, &token).await;
    assert_eq!(r.headers()["retry-after"], "7");

    emu.set_faults(Faults {
        malformed_json_fraction: 1.0,
        ..Faults::default()
    });
    let r = get(&url, &token).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).is_err());

    emu.set_faults(Faults {
        drop_after_bytes: Some(1000),
        ..Faults::default()
    });
    let r = get(&content, &token).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.is_err(), "body is cut");

    emu.set_faults(Faults {
        max_bytes_per_sec: Some(200_000),
        ..Faults::default()
    });
    let t = std::time::Instant::now();
    let r = get(&content, &token).await;
    assert_eq!(r.bytes().await.unwrap(), bytes);
    assert!(
        t.elapsed() >= Duration::from_millis(bytes.len() as u64 * 1000 / 200_000 / 2),
        "{:?}",
        t.elapsed()
    );

    // Unreachable: new connections and kept-alive ones are closed without an answer.
    let kept = http();
    let r = kept.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.bytes().await.unwrap();
    emu.set_faults(Faults {
        unreachable: true,
        ..Faults::default()
    });
    assert!(kept.get(&url).bearer_auth(&token).send().await.is_err());
    assert!(http().get(&url).bearer_auth(&token).send().await.is_err());
    assert!(
        http()
            .get(&content)
            .bearer_auth(&token)
            .send()
            .await
            .is_err()
    );

    emu.set_faults(Faults::default());
    assert_eq!(get(&url, &token).await.status(), StatusCode::OK);
    assert!(emu.stats().faults_injected >= 8);
}

#[tokio::test]
async fn stats_count_requests_and_serve_as_json() {
    let emu = start(config()).await;
    let token = access(&login(&emu).await);
    get(&wide(&emu, EXT_LOG, ""), &token).await;
    get(&wide(&emu, ACC_LOG, ""), &token).await;
    get(&wide(&emu, ACC_LOG, ""), &token).await;
    get(
        &format!(
            "{}/restapi/v1.0/account/~/recording/44444444",
            emu.api_url()
        ),
        &token,
    )
    .await;
    let body = get(
        &format!(
            "{}/restapi/v1.0/account/~/recording/44444444/content",
            emu.media_url()
        ),
        &token,
    )
    .await
    .bytes()
    .await
    .unwrap();
    let s = emu.stats();
    assert_eq!(s.endpoint("token"), 1);
    assert_eq!(s.endpoint("extension-call-log"), 1);
    assert_eq!(s.endpoint("account-call-log"), 2);
    assert_eq!(s.call_log(), 3);
    assert_eq!(s.endpoint("recording-meta"), 1);
    assert_eq!(s.media(), 1);
    assert_eq!(s.by_group["Heavy"], 5);
    assert_eq!(s.by_group["Auth"], 1);
    assert_eq!(s.bytes_served, body.len() as u64);
    assert_eq!(s.throttled, 0);

    let served: Stats = http()
        .get(format!("{}/__emulator/stats", emu.api_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, s, "the stats endpoint is not counted");
    emu.reset_stats();
    assert_eq!(emu.stats(), Stats::default());
    emu.shutdown().await;
}

#[tokio::test]
async fn media_behaviour_settings() {
    let emu = start(Config {
        format: AudioFormat::Wav,
        media: MediaBehaviour {
            omit_content_length: true,
            ignore_range: true,
            x_wav: true,
            ..MediaBehaviour::default()
        },
        ..config()
    })
    .await;
    let token = access(&login(&emu).await);
    let content = format!(
        "{}/restapi/v1.0/account/~/recording/44444444/content",
        emu.media_url()
    );
    let r = http()
        .get(&content)
        .bearer_auth(&token)
        .header("Range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "audio/x-wav");
    assert!(!r.headers().contains_key("content-length"));
    assert!(!r.headers().contains_key("accept-ranges"));
    assert_eq!(r.headers()["transfer-encoding"], "chunked");
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), 44 + 35 * 16_000);
    assert_eq!(&body[..4], b"RIFF");
    assert_eq!(body, emu.recording_bytes("44444444").unwrap());
}

/// Duration in seconds that ffprobe reports, after a full decode by ffmpeg without errors.
fn decoded_duration(bytes: &[u8], ext: &str) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("rec.{ext}"));
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "default=nw=1:nk=1",
        ])
        .arg(&path)
        .output()
        .expect("ffprobe is installed (apt-get install ffmpeg)");
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decode = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-xerror", "-i"])
        .arg(&path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg is installed");
    assert!(
        decode.status.success() && decode.stderr.is_empty(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&decode.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a duration")
}

#[tokio::test]
async fn audio_decodes_with_the_records_duration() {
    let emu = start(Config {
        format: AudioFormat::Mixed,
        ..config()
    })
    .await;
    let token = access(&login(&emu).await);
    let now = jiff::Timestamp::now();
    let truth = emu.calls();
    let mut seen = std::collections::HashSet::new();
    for c in truth
        .iter()
        .filter(|c| c.recording_id.is_some() && c.fetchable_at < now && c.duration_s < 400)
    {
        let ct = c.content_type.unwrap();
        if !seen.insert(ct) {
            continue;
        }
        let id = c.recording_id.as_deref().unwrap();
        let r = get(
            &format!(
                "{}/restapi/v1.0/account/~/recording/{id}/content",
                emu.media_url()
            ),
            &token,
        )
        .await;
        assert_eq!(r.headers()["content-type"], ct);
        let bytes = r.bytes().await.unwrap();
        let d = decoded_duration(&bytes, if ct == "audio/mpeg" { "mp3" } else { "wav" });
        assert!(
            (d - c.duration_s as f64).abs() < 0.1,
            "{ct}: decoded {d} s, record says {} s",
            c.duration_s
        );
    }
    assert_eq!(seen.len(), 2, "both formats checked");
}

#[tokio::test]
async fn plain_file_listing_for_http_peers() {
    let emu = start(config()).await;
    let index = http().get(emu.files_url()).send().await.unwrap();
    assert_eq!(index.status(), StatusCode::OK);
    assert!(
        index.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = index.text().await.unwrap();
    let now = jiff::Timestamp::now();
    let calls = emu.calls();
    let fetchable: Vec<&CallInfo> = calls
        .iter()
        .filter(|c| c.recording_id.is_some() && c.fetchable_at <= now)
        .collect();
    let links = html.matches("<a href=\"").count();
    assert_eq!(
        links,
        fetchable.len(),
        "one link per fetchable recording:\n{html}"
    );
    assert!(html.contains("<a href=\"44444444.mp3\">"), "{html}");
    let not_yet = calls
        .iter()
        .find(|c| c.recording_id.is_some() && c.fetchable_at > now)
        .expect("a call not fetchable yet");
    assert!(!html.contains(&format!(
        "\"{}.mp3\"",
        not_yet.recording_id.as_deref().unwrap()
    )));

    // The files themselves: no auth, the same bytes as the contentUri, HEAD and Range.
    let url = format!("{}44444444.mp3", emu.files_url());
    let whole = emu.recording_bytes("44444444").unwrap();
    let r = http().get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "audio/mpeg");
    assert_eq!(
        r.headers()["content-length"],
        whole.len().to_string().as_str()
    );
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert!(r.headers().contains_key("last-modified"));
    assert_eq!(r.bytes().await.unwrap(), whole);
    let h = http().head(&url).send().await.unwrap();
    assert_eq!(h.status(), StatusCode::OK);
    assert_eq!(
        h.headers()["content-length"],
        whole.len().to_string().as_str()
    );
    let p = http()
        .get(&url)
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(p.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        p.headers()["content-range"],
        format!("bytes 100-199/{}", whole.len()).as_str()
    );
    assert_eq!(p.headers()["accept-ranges"], "bytes");
    assert_eq!(p.bytes().await.unwrap(), whole[100..200]);
    let bad = http()
        .get(&url)
        .header("Range", format!("bytes={}-", whole.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    for missing in ["44444444.wav", "99.mp3", "nodot"] {
        let r = http()
            .get(format!("{}{missing}", emu.files_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{missing}");
    }

    // Counted apart from the RingCentral endpoints, in no rate group.
    let s = emu.stats();
    assert_eq!(s.endpoint("files-index"), 1);
    assert_eq!(s.endpoint("files-head"), 1);
    assert_eq!(s.endpoint("files-get"), 6);
    assert_eq!(s.media(), 0);
    assert!(s.by_group.is_empty(), "{:?}", s.by_group);
    assert_eq!(s.bytes_served, whole.len() as u64 + 100);
    emu.shutdown().await;
}

// ----- per-recording media quirks -----

/// The seed call's recording (35 s; fetchable from the start).
const SEED_REC: &str = "44444444";

fn content_url(emu: &Emulator, id: &str) -> String {
    format!(
        "{}/restapi/v1.0/account/~/recording/{id}/content",
        emu.media_url()
    )
}

/// An account whose seed recording is served with quirks `q` (the others with none), and a token.
async fn quirky(format: AudioFormat, q: MediaQuirks) -> (Emulator, String) {
    let media = MediaBehaviour {
        per_recording: [(SEED_REC.to_string(), q)].into(),
        ..MediaBehaviour::default()
    };
    let emu = start(Config {
        format,
        media,
        ..config()
    })
    .await;
    let token = access(&login(&emu).await);
    (emu, token)
}

async fn fetch(emu: &Emulator, id: &str, token: &str, range: Option<String>) -> reqwest::Response {
    let mut req = http().get(content_url(emu, id)).bearer_auth(token);
    if let Some(range) = range {
        req = req.header("Range", range);
    }
    req.send().await.expect("media request")
}

/// A header's value as text ("" when absent).
fn hdr<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

/// The body as far as it came, and whether it broke off.
async fn body_until_error(mut r: reqwest::Response) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    loop {
        match r.chunk().await {
            Ok(Some(c)) => got.extend_from_slice(&c),
            Ok(None) => return (got, false),
            Err(_) => return (got, true),
        }
    }
}

/// A 200 with the whole recording: `Content-Length` unless chunked, `Accept-Ranges` unless the
/// range is ignored.
async fn assert_whole(r: reqwest::Response, bytes: &[u8], q: &MediaQuirks) {
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        hdr(&r, "content-length"),
        if q.chunked {
            String::new()
        } else {
            bytes.len().to_string()
        }
    );
    assert_eq!(
        hdr(&r, "transfer-encoding"),
        if q.chunked { "chunked" } else { "" }
    );
    assert_eq!(
        hdr(&r, "accept-ranges"),
        if q.range == RangeMode::Ignore {
            ""
        } else {
            "bytes"
        }
    );
    assert!(!r.headers().contains_key("content-range"));
    assert!(r.bytes().await.unwrap() == bytes, "the whole recording");
}

/// A 206 with bytes `start..end` of the recording and `Content-Range: bytes start-(end-1)/total`.
async fn assert_part(
    r: reqwest::Response,
    bytes: &[u8],
    (start, end): (usize, usize),
    total: &str,
    q: &MediaQuirks,
) {
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        hdr(&r, "content-range"),
        format!("bytes {start}-{}/{total}", end - 1)
    );
    assert_eq!(
        hdr(&r, "content-length"),
        if q.chunked {
            String::new()
        } else {
            (end - start).to_string()
        }
    );
    assert_eq!(
        hdr(&r, "transfer-encoding"),
        if q.chunked { "chunked" } else { "" }
    );
    assert_eq!(hdr(&r, "accept-ranges"), "bytes");
    assert!(
        r.bytes().await.unwrap() == bytes[start..end],
        "bytes {start}..{end}"
    );
}

#[tokio::test]
async fn quirk_chunked_bodies_have_no_content_length() {
    let q = MediaQuirks {
        chunked: true,
        ..MediaQuirks::default()
    };
    let (emu, token) = quirky(AudioFormat::Mp3, q.clone()).await;
    let bytes = emu.recording_bytes(SEED_REC).unwrap();
    assert_whole(fetch(&emu, SEED_REC, &token, None).await, &bytes, &q).await;
    let r = fetch(&emu, SEED_REC, &token, Some("bytes=1000-".into())).await;
    assert_eq!(hdr(&r, "content-type"), "audio/mpeg");
    assert_part(r, &bytes, (1000, bytes.len()), &bytes.len().to_string(), &q).await;
    // Other recordings keep the default: Content-Length.
    let other = emu
        .calls()
        .into_iter()
        .find(|c| {
            c.recording_id.as_deref().is_some_and(|id| id != SEED_REC)
                && c.fetchable_at < jiff::Timestamp::now()
        })
        .unwrap();
    let r = fetch(&emu, other.recording_id.as_deref().unwrap(), &token, None).await;
    assert_eq!(
        hdr(&r, "content-length"),
        other.recording_len.unwrap().to_string()
    );
}

#[tokio::test]
async fn quirk_range_honoured() {
    let q = MediaQuirks {
        range: RangeMode::Honour,
        ..MediaQuirks::default()
    };
    let (emu, token) = quirky(AudioFormat::Mp3, q.clone()).await;
    let bytes = emu.recording_bytes(SEED_REC).unwrap();
    let len = bytes.len();
    assert_whole(fetch(&emu, SEED_REC, &token, None).await, &bytes, &q).await;
    let r = fetch(&emu, SEED_REC, &token, Some("bytes=5000-".into())).await;
    assert_part(r, &bytes, (5000, len), &len.to_string(), &q).await;
    let r = fetch(&emu, SEED_REC, &token, Some("bytes=10-19".into())).await;
    assert_part(r, &bytes, (10, 20), &len.to_string(), &q).await;
}

#[tokio::test]
async fn quirk_range_ignored() {
    // Past the end too: a server that ignores Range answers the whole body whatever past_end says.
    let q = MediaQuirks {
        range: RangeMode::Ignore,
        past_end: PastEnd::Bare416,
        ..MediaQuirks::default()
    };
    let (emu, token) = quirky(AudioFormat::Mp3, q.clone()).await;
    let bytes = emu.recording_bytes(SEED_REC).unwrap();
    assert_whole(fetch(&emu, SEED_REC, &token, None).await, &bytes, &q).await;
    assert_whole(
        fetch(&emu, SEED_REC, &token, Some("bytes=5000-".into())).await,
        &bytes,
        &q,
    )
    .await;
    assert_whole(
        fetch(
            &emu,
            SEED_REC,
            &token,
            Some(format!("bytes={}-", bytes.len())),
        )
        .await,
        &bytes,
        &q,
    )
    .await;
}

#[tokio::test]
async fn quirk_range_with_unknown_total() {
    let q = MediaQuirks {
        range: RangeMode::UnknownTotal,
        ..MediaQuirks::default()
    };
    let (emu, token) = quirky(AudioFormat::Mp3, q.clone()).await;
    let bytes = emu.recording_bytes(SEED_REC).unwrap();
    let len = bytes.len();
    assert_whole(fetch(&emu, SEED_REC, &token, None).await, &bytes, &q).await;
    let r = fetch(&emu, SEED_REC, &token, Some("bytes=5000-".into())).await;
    assert_part(r, &bytes, (5000, len), "*", &q).await;
    let r = fetch(&emu, SEED_REC, &token, Some("bytes=10-19".into())).await;
    assert_part(r, &bytes, (10, 20), "*", &q).await;
}

#[tokio::test]
async fn quirk_range_capped() {
    let q = MediaQuirks {
        range: RangeMode::Capped(64 * 1024),
        ..MediaQuirks::default()
    };
    let (emu, token) = quirky(AudioFormat::Mp3, q.clone()).await;
    let bytes = emu.recording_bytes(SEED_REC).unwrap();
    let len = bytes.len();
    assert!(len > 2 * 65_536 + 5000);
    // No Range: still the whole body.
    assert_whole(fetch(&emu, SEED_REC, &token, None).await, &bytes, &q).await;
    let r = fetch(&emu, SEED_REC, &token, Some("bytes=5000-".into())).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        hdr(&r, "content-range"),
        format!("bytes 5000-{}/{len}", 5000 + 65_536 - 1)
    );
    assert_eq!(hdr(&r, "content-length"), "65536");
    assert_eq!(hdr(&r, "accept-ranges"), "bytes");
    assert!(r.bytes().await.unwrap() == emu.recording_range(SEED_REC, 5000, 65_536).unwrap());
    // A piece within the cap, and the tail, are answered as asked.
    let r = fetch(&emu, SEED_REC, &token, Some("bytes=100-199".into())).await;
    assert_part(r, &bytes, (100, 200), &len.to_string(), &q).await;
    let r = fetch(&emu, SEED_REC, &token, Some(format!("bytes={}-", len - 10))).await;
    assert_part(r, &bytes, (len - 10, len), &len.to_string(), &q).await;
}

#[tokio::test]
async fn quirk_past_end_416_with_content_range() {
    let q = MediaQuirks {
        past_end: PastEnd::RangeNotSatisfiable,
        ..MediaQuirks::default()
    };
    let (emu, token) = quirky(AudioFormat::Mp3, q).await;
    let len = emu.recording_bytes(SEED_REC).unwrap().len();
    let r = fetch(&emu, SEED_REC, &token, Some(format!("bytes={len}-"))).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(hdr(&r, "content-range"), format!("bytes */{len}"));
    assert_eq!(error_code(&r.json().await.unwrap()), "CMN-107");
}

#[tokio::test]
async fn quirk_past_end_bare_416() {
    // With an unknown total as well: the client learns nothing about the size.
    let q = MediaQuirks {
        past_end: PastEnd::Bare416,
        range: RangeMode::UnknownTotal,
        ..MediaQuirks::default()
    };
    let (emu, token) = quirky(AudioFormat::Mp3, q).await;
    let len = emu.recording_bytes(SEED_REC).unwrap().len();
    for range in [format!("bytes={len}-"), format!("bytes={}-", len + 1000)] {
        let r = fetch(&emu, SEED_REC, &token, Some(range)).await;
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert!(!r.headers().contains_key("content-range"));
        assert_eq!(error_code(&r.json().await.unwrap()), "CMN-107");
    }
}

#[tokio::test]
async fn quirk_past_end_whole_body() {
    let q = MediaQuirks {
        past_end: PastEnd::WholeBody,
        chunked: true,
        ..MediaQuirks::default()
    };
    let (emu, token) = quirky(AudioFormat::Mp3, q.clone()).await;
    let bytes = emu.recording_bytes(SEED_REC).unwrap();
    assert_whole(
        fetch(
            &emu,
            SEED_REC,
            &token,
            Some(format!("bytes={}-", bytes.len())),
        )
        .await,
        &bytes,
        &q,
    )
    .await;
    // Within the body, ranges are still honoured.
    let r = fetch(&emu, SEED_REC, &token, Some("bytes=0-9".into())).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert!(r.bytes().await.unwrap() == bytes[..10]);
}

#[tokio::test]
async fn quirk_x_wav_for_wav_recordings_only() {
    let q = MediaQuirks {
        x_wav: true,
        ..MediaQuirks::default()
    };
    let (emu, token) = quirky(AudioFormat::Wav, q.clone()).await;
    let bytes = emu.recording_bytes(SEED_REC).unwrap();
    let r = fetch(&emu, SEED_REC, &token, None).await;
    assert_eq!(hdr(&r, "content-type"), "audio/x-wav");
    assert_whole(r, &bytes, &q).await;
    let (_, meta) = get_json(
        &format!(
            "{}/restapi/v1.0/account/~/recording/{SEED_REC}",
            emu.api_url()
        ),
        &token,
    )
    .await;
    assert_eq!(
        meta["contentType"], "audio/x-wav",
        "the metadata says the same"
    );
    let calls = emu.calls();
    assert_eq!(
        calls
            .iter()
            .find(|c| c.recording_id.as_deref() == Some(SEED_REC))
            .unwrap()
            .content_type,
        Some("audio/x-wav")
    );
    // Another WAV recording keeps audio/wav.
    let other = calls
        .iter()
        .find(|c| {
            c.recording_id.as_deref().is_some_and(|id| id != SEED_REC)
                && c.fetchable_at < jiff::Timestamp::now()
        })
        .unwrap();
    assert_eq!(other.content_type, Some("audio/wav"));
    let r = fetch(
        &emu,
        other.recording_id.as_deref().unwrap(),
        &token,
        Some("bytes=0-3".into()),
    )
    .await;
    assert_eq!(hdr(&r, "content-type"), "audio/wav");

    // MP3 stays audio/mpeg.
    let (emu, token) = quirky(AudioFormat::Mp3, q).await;
    let r = fetch(&emu, SEED_REC, &token, Some("bytes=0-3".into())).await;
    assert_eq!(hdr(&r, "content-type"), "audio/mpeg");
}

#[tokio::test]
async fn quirk_drop_at_cuts_once_per_offset() {
    let q = MediaQuirks {
        drop_at: vec![1000],
        ..MediaQuirks::default()
    };
    let (emu, token) = quirky(AudioFormat::Mp3, q).await;
    let bytes = emu.recording_bytes(SEED_REC).unwrap();
    // A range past the offset does not cross it and leaves it armed.
    let r = fetch(&emu, SEED_REC, &token, Some("bytes=2000-".into())).await;
    assert!(r.bytes().await.unwrap() == bytes[2000..]);
    // With Content-Length: the headers promise the whole body, 1000 bytes come, then the break.
    let r = fetch(&emu, SEED_REC, &token, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(hdr(&r, "content-length"), bytes.len().to_string());
    let (got, broke) = body_until_error(r).await;
    assert!(broke, "the body breaks off");
    assert!(
        got == bytes[..1000],
        "exactly the bytes before the offset: {}",
        got.len()
    );
    // The offset has fired: the same request succeeds.
    assert!(
        fetch(&emu, SEED_REC, &token, None)
            .await
            .bytes()
            .await
            .unwrap()
            == bytes
    );
    assert_eq!(emu.stats().faults_injected, 1);

    // Chunked, two offsets, resumed with Range each time.
    emu.set_media_quirks(
        SEED_REC,
        MediaQuirks {
            chunked: true,
            drop_at: vec![50_000, 1000],
            ..MediaQuirks::default()
        },
    );
    let mut have = Vec::new();
    for (from, to) in [(0, 1000), (1000, 50_000)] {
        let r = fetch(&emu, SEED_REC, &token, Some(format!("bytes={from}-"))).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert!(!r.headers().contains_key("content-length"));
        let (got, broke) = body_until_error(r).await;
        assert!(broke, "cut at {to}");
        assert!(got == bytes[from..to], "{from}..{to}: got {}", got.len());
        have.extend(got);
    }
    let r = fetch(&emu, SEED_REC, &token, Some("bytes=50000-".into())).await;
    let (got, broke) = body_until_error(r).await;
    assert!(!broke);
    have.extend(got);
    assert!(have == bytes);
    assert!(
        fetch(&emu, SEED_REC, &token, Some("bytes=0-".into()))
            .await
            .bytes()
            .await
            .unwrap()
            == bytes
    );
    assert_eq!(emu.stats().faults_injected, 3);
}

#[tokio::test]
async fn quirk_close_delimited_ends_bodies_by_closing_and_a_cut_looks_like_the_end() {
    let q = MediaQuirks {
        chunked: true,
        close_delimited: true,
        drop_at: vec![30_000],
        ..MediaQuirks::default()
    };
    let (emu, token) = quirky(AudioFormat::Wav, q).await;
    let bytes = emu.recording_bytes(SEED_REC).unwrap();
    // An HTTP/1.0 answer with neither a length nor chunks: the body is what comes before the
    // close. The cut ends it cleanly at byte 30000, with no error to tell it from the end.
    let r = fetch(&emu, SEED_REC, &token, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), reqwest::Version::HTTP_10);
    assert!(!r.headers().contains_key("content-length"));
    assert!(!r.headers().contains_key("transfer-encoding"));
    let (got, broke) = body_until_error(r).await;
    assert!(!broke, "a close, not an error");
    assert!(got == bytes[..30_000], "cut: got {}", got.len());
    // The cut fired once: the next answer is the whole body, ended by the close as well.
    let r = fetch(&emu, SEED_REC, &token, Some("bytes=30000-".into())).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert!(!r.headers().contains_key("content-length"));
    let (got, broke) = body_until_error(r).await;
    assert!(!broke);
    assert!(got == bytes[30_000..], "rest: got {}", got.len());
    assert_eq!(emu.stats().faults_injected, 1);
}

#[tokio::test]
async fn quirk_bytes_per_sec_caps_one_recording() {
    let q = MediaQuirks {
        bytes_per_sec: Some(100_000),
        ..MediaQuirks::default()
    };
    let (emu, token) = quirky(AudioFormat::Mp3, q).await;
    let bytes = emu.recording_bytes(SEED_REC).unwrap();
    let t = std::time::Instant::now();
    assert!(
        fetch(&emu, SEED_REC, &token, None)
            .await
            .bytes()
            .await
            .unwrap()
            == bytes
    );
    let expected = Duration::from_millis(bytes.len() as u64 * 1000 / 100_000);
    assert!(
        t.elapsed() >= expected * 3 / 4,
        "{:?} for {} bytes",
        t.elapsed(),
        bytes.len()
    );
}

#[tokio::test]
async fn quirk_errors_first_then_content() {
    let q = MediaQuirks {
        errors_first: 4,
        ..MediaQuirks::default()
    };
    let (emu, token) = quirky(AudioFormat::Mp3, q).await;
    let bytes = emu.recording_bytes(SEED_REC).unwrap();
    let r = fetch(&emu, SEED_REC, &token, None).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(hdr(&r, "retry-after"), "1");
    assert_eq!(hdr(&r, "x-rate-limit-group"), "heavy");
    assert_eq!(error_code(&r.json().await.unwrap()), "CMN-201");
    for want in [
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::BAD_GATEWAY,
        StatusCode::SERVICE_UNAVAILABLE,
    ] {
        assert_eq!(
            fetch(&emu, SEED_REC, &token, Some("bytes=0-".into()))
                .await
                .status(),
            want
        );
    }
    let r = fetch(&emu, SEED_REC, &token, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap() == bytes);
    assert_eq!(emu.stats().faults_injected, 4);
}

#[tokio::test]
async fn quirk_not_found_first_then_content() {
    let q = MediaQuirks {
        not_found_first: 2,
        errors_first: 1,
        ..MediaQuirks::default()
    };
    let (emu, token) = quirky(AudioFormat::Mp3, q).await;
    let bytes = emu.recording_bytes(SEED_REC).unwrap();
    // A refused request does not reach the quirks and is not counted among the first ones.
    assert_eq!(
        http()
            .get(content_url(&emu, SEED_REC))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    for _ in 0..2 {
        let r = fetch(&emu, SEED_REC, &token, None).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(error_code(&r.json().await.unwrap()), "CMN-102");
    }
    assert_eq!(
        fetch(&emu, SEED_REC, &token, None).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let r = fetch(&emu, SEED_REC, &token, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap() == bytes);
    // The metadata is not held back.
    let (status, _) = get_json(
        &format!(
            "{}/restapi/v1.0/account/~/recording/{SEED_REC}",
            emu.api_url()
        ),
        &token,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn media_quirks_draw_is_deterministic_and_varied() {
    let ids: Vec<String> = (0..200)
        .map(|i| format!("{}", 70_000_000 + 37 * i))
        .collect();
    let draws: Vec<MediaQuirks> = ids
        .iter()
        .map(|id| MediaQuirks::draw(11, id, 500_000))
        .collect();
    assert_eq!(
        draws,
        ids.iter()
            .map(|id| MediaQuirks::draw(11, id, 500_000))
            .collect::<Vec<_>>()
    );
    assert_ne!(
        draws,
        ids.iter()
            .map(|id| MediaQuirks::draw(12, id, 500_000))
            .collect::<Vec<_>>(),
        "the seed matters"
    );
    let any = |f: &dyn Fn(&MediaQuirks) -> bool| draws.iter().any(f);
    assert!(any(&|q| q.range == RangeMode::Honour));
    assert!(any(&|q| q.range == RangeMode::Ignore));
    assert!(any(&|q| q.range == RangeMode::UnknownTotal));
    assert!(any(&|q| matches!(q.range, RangeMode::Capped(_))));
    assert!(any(&|q| q.past_end == PastEnd::RangeNotSatisfiable));
    assert!(any(&|q| q.past_end == PastEnd::Bare416));
    assert!(any(&|q| q.past_end == PastEnd::WholeBody));
    assert!(any(&|q| q.chunked) && any(&|q| !q.chunked));
    assert!(any(&|q| q.x_wav) && any(&|q| !q.x_wav));
    assert!(
        any(&|q| q.drop_at.is_empty())
            && any(&|q| q.drop_at.len() == 1)
            && any(&|q| q.drop_at.len() == 2)
    );
    assert!(any(&|q| q.bytes_per_sec.is_some()) && any(&|q| q.bytes_per_sec.is_none()));
    assert!(any(&|q| q.errors_first == 0) && any(&|q| q.errors_first == 2));
    assert!(any(&|q| q.not_found_first == 0) && any(&|q| q.not_found_first == 1));
    assert!(
        draws
            .iter()
            .all(|q| q.drop_at.iter().all(|&d| 0 < d && d < 500_000))
    );
    // The offsets depend on the length; nothing else does.
    let short = MediaQuirks::draw(11, &ids[0], 1);
    assert!(short.drop_at.is_empty());
    assert_eq!(
        MediaQuirks {
            drop_at: Vec::new(),
            ..draws[0].clone()
        },
        short
    );
}

#[tokio::test]
async fn media_quirks_in_force_whichever_way_set() {
    let pinned = MediaQuirks {
        errors_first: 1,
        ..MediaQuirks::default()
    };
    let media = MediaBehaviour {
        omit_content_length: true,
        mixed: Some(5),
        per_recording: [(SEED_REC.to_string(), pinned.clone())].into(),
        ..MediaBehaviour::default()
    };
    let emu = start(Config { media, ..config() }).await;
    let token = access(&login(&emu).await);
    assert_eq!(
        emu.media_quirks(SEED_REC),
        pinned,
        "per_recording wins over the mix"
    );
    let now = jiff::Timestamp::now();
    let mut checked = 0;
    for c in emu
        .calls()
        .iter()
        .filter(|c| c.recording_id.is_some() && c.recording_id.as_deref() != Some(SEED_REC))
    {
        let id = c.recording_id.as_deref().unwrap();
        let q = emu.media_quirks(id);
        assert_eq!(
            q,
            MediaQuirks::draw(5, id, c.recording_len.unwrap()),
            "{id}: drawn, the flags ignored"
        );
        // What the media host sends follows the drawn quirks.
        if checked < 6 && q.not_found_first == 0 && q.errors_first == 0 && c.fetchable_at < now {
            let r = fetch(&emu, id, &token, Some("bytes=0-".into())).await;
            assert_eq!(
                r.headers().contains_key("content-length"),
                !q.chunked,
                "{id}: {q:?}"
            );
            assert_eq!(
                r.headers().contains_key("accept-ranges"),
                q.range != RangeMode::Ignore,
                "{id}: {q:?}"
            );
            let want = if q.range == RangeMode::Ignore {
                StatusCode::OK
            } else {
                StatusCode::PARTIAL_CONTENT
            };
            assert_eq!(r.status(), want, "{id}: {q:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
    // A runtime change wins over everything.
    let runtime = MediaQuirks {
        chunked: true,
        range: RangeMode::UnknownTotal,
        ..MediaQuirks::default()
    };
    emu.set_media_quirks(SEED_REC, runtime.clone());
    assert_eq!(emu.media_quirks(SEED_REC), runtime);
    let r = fetch(&emu, SEED_REC, &token, Some("bytes=0-".into())).await;
    assert_eq!(
        r.status(),
        StatusCode::PARTIAL_CONTENT,
        "errors_first no longer applies"
    );
    assert!(hdr(&r, "content-range").ends_with("/*"));
}

/// Downloads a recording whole as a careful client must: 404 and 5xx are retried; a cut body is
/// resumed with `Range` from what came; a 200 is the whole body from 0 (a range ignored); a 206 is
/// appended whatever its size; the size comes from `Content-Range` `/N`, a 200's
/// `Content-Length`, a 200 that ends, or a 416 after the last byte. Returns the bytes and the
/// number of requests.
async fn careful_download(emu: &Emulator, id: &str, token: &str) -> (Vec<u8>, u64) {
    let mut have: Vec<u8> = Vec::new();
    let mut total: Option<u64> = None;
    let mut candidate_end: Option<u64> = None;
    let mut requests = 0;
    while total != Some(have.len() as u64) {
        requests += 1;
        assert!(requests < 100, "{id}: no end after {requests} requests");
        let range = (!have.is_empty()).then(|| format!("bytes={}-", have.len()));
        let r = fetch(emu, id, token, range).await;
        match r.status() {
            StatusCode::NOT_FOUND => {}
            s if s.is_server_error() => {}
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let told = hdr(&r, "content-range")
                    .strip_prefix("bytes */")
                    .map(|n| n.parse::<u64>().unwrap());
                assert!(
                    told.is_none_or(|n| n == have.len() as u64),
                    "{id}: asked at the end"
                );
                total = Some(have.len() as u64);
            }
            StatusCode::OK => {
                total = r
                    .headers()
                    .get("content-length")
                    .map(|v| v.to_str().unwrap().parse().unwrap());
                // Neither a length nor chunks: the close ends the body, and a cut looks the same.
                // Only a second answer ending at the same byte confirms the end.
                let close_delimited = total.is_none()
                    && !r.headers().contains_key("transfer-encoding")
                    && r.version() == reqwest::Version::HTTP_10;
                let (got, broke) = body_until_error(r).await;
                let end = got.len() as u64;
                if !broke && (!close_delimited || candidate_end == Some(end)) {
                    total = Some(end);
                }
                candidate_end = Some(end);
                have = got;
            }
            StatusCode::PARTIAL_CONTENT => {
                let cr = hdr(&r, "content-range")
                    .strip_prefix("bytes ")
                    .unwrap()
                    .to_string();
                let (span, of) = cr.split_once('/').unwrap();
                assert_eq!(
                    span.split_once('-').unwrap().0.parse::<usize>().unwrap(),
                    have.len(),
                    "{id}: {cr}"
                );
                if of != "*" {
                    total = Some(of.parse().unwrap());
                }
                have.extend(body_until_error(r).await.0);
            }
            s => panic!("{id}: unexpected {s}"),
        }
    }
    (have, requests)
}

#[tokio::test]
async fn a_careful_client_recovers_every_drawn_mix() {
    let emu = start(Config {
        format: AudioFormat::Mixed,
        media: MediaBehaviour {
            mixed: Some(3),
            ..MediaBehaviour::default()
        },
        ..config()
    })
    .await;
    let token = access(&login(&emu).await);
    let now = jiff::Timestamp::now();
    let calls: Vec<CallInfo> = emu
        .calls()
        .into_iter()
        .filter(|c| c.recording_id.is_some() && c.fetchable_at < now && c.duration_s < 200)
        .take(30)
        .collect();
    assert_eq!(calls.len(), 30);
    let quirks: Vec<MediaQuirks> = calls
        .iter()
        .map(|c| emu.media_quirks(c.recording_id.as_deref().unwrap()))
        .collect();
    // The sample is varied enough to mean something.
    assert!(
        quirks.iter().any(|q| !q.drop_at.is_empty()) && quirks.iter().any(|q| q.errors_first > 0)
    );
    assert!(
        quirks.iter().any(|q| q.not_found_first > 0)
            && quirks
                .iter()
                .any(|q| matches!(q.range, RangeMode::Capped(_)))
    );
    assert!(
        quirks.iter().any(|q| q.range == RangeMode::Ignore)
            && quirks.iter().any(|q| q.range == RangeMode::UnknownTotal)
    );
    assert!(
        quirks
            .iter()
            .any(|q| q.close_delimited && !q.drop_at.is_empty())
    );
    for (c, q) in calls.iter().zip(&quirks) {
        let id = c.recording_id.as_deref().unwrap();
        let (bytes, requests) = careful_download(&emu, id, &token).await;
        assert!(bytes == emu.recording_bytes(id).unwrap(), "{id}: {q:?}");
        // One request per refusal and cut, one per capped piece (a cut adds one), one to find the
        // end when the total is not told.
        let len = c.recording_len.unwrap();
        let pieces = match q.range {
            RangeMode::Capped(cap) => len.div_ceil(cap).max(1) + q.drop_at.len() as u64,
            _ => 1,
        };
        let bound =
            u64::from(q.not_found_first + q.errors_first) + q.drop_at.len() as u64 + pieces + 1;
        assert!(requests <= bound, "{id}: {requests} requests for {q:?}");
        assert_eq!(emu.stats().media_of(id), requests);
    }
}

#[tokio::test]
async fn media_requests_are_counted_per_recording() {
    let q = MediaQuirks {
        errors_first: 1,
        ..MediaQuirks::default()
    };
    let (emu, token) = quirky(AudioFormat::Mp3, q).await;
    let len = emu.recording_bytes(SEED_REC).unwrap().len();
    assert_eq!(
        http()
            .get(content_url(&emu, SEED_REC))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        fetch(&emu, SEED_REC, &token, None).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        fetch(&emu, SEED_REC, &token, Some(format!("bytes={len}-")))
            .await
            .status(),
        StatusCode::RANGE_NOT_SATISFIABLE
    );
    assert_eq!(
        fetch(&emu, SEED_REC, &token, None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        fetch(&emu, "999", &token, None).await.status(),
        StatusCode::NOT_FOUND
    );
    get(
        &format!(
            "{}/restapi/v1.0/account/~/recording/{SEED_REC}",
            emu.api_url()
        ),
        &token,
    )
    .await;
    let s = emu.stats();
    assert_eq!(
        s.media_by_recording,
        [(SEED_REC.to_string(), 4), ("999".to_string(), 1)].into()
    );
    assert_eq!(s.media_of(SEED_REC), 4);
    assert_eq!(s.media(), 5);
    let served: Stats = http()
        .get(format!("{}/__emulator/stats", emu.api_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, s);
    // Stats from before the field still parse.
    let old: Stats = serde_json::from_str(r#"{"by_endpoint":{},"by_group":{},"throttled":0,"penalty_violations":0,"retry_after_violations":0,"bytes_served":0,"faults_injected":0}"#).unwrap();
    assert!(old.media_by_recording.is_empty());
    // Throttled requests count too.
    let emu = start(Config {
        rate: RateLimits {
            heavy: 1,
            ..RateLimits::default()
        },
        ..config()
    })
    .await;
    let token = access(&login(&emu).await);
    assert_eq!(
        fetch(&emu, SEED_REC, &token, Some("bytes=0-0".into()))
            .await
            .status(),
        StatusCode::PARTIAL_CONTENT
    );
    assert_eq!(
        fetch(&emu, SEED_REC, &token, Some("bytes=0-0".into()))
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(emu.stats().media_of(SEED_REC), 2);
    emu.reset_stats();
    assert!(emu.stats().media_by_recording.is_empty());
}

/// Kills the emulator process when the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn emulator_binary_takes_media_mix() {
    const BIN: &str = env!("CARGO_BIN_EXE_ringfs-emulator");
    let help = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--media-mix <SEED>"));
    let bad = std::process::Command::new(BIN)
        .args(["--media-mix", "many"])
        .output()
        .unwrap();
    assert!(!bad.status.success());

    // A seed whose draw for the seed recording is told apart from no mix by the first answers.
    let truth = start(Config::default()).await;
    let bytes = truth.recording_bytes(SEED_REC).unwrap();
    let len = bytes.len() as u64;
    let seed = (1..)
        .find(|&s| {
            let q = MediaQuirks::draw(s, SEED_REC, len);
            q.not_found_first == 1
                && q.errors_first == 1
                && q.chunked
                && q.range == RangeMode::Honour
        })
        .unwrap();
    let mut child = Child(
        std::process::Command::new(BIN)
            .args(["--media-mix", &seed.to_string(), "--unlimited"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(child.0.stdout.take().unwrap()));
    let api = lines.next().unwrap().unwrap();
    let media = lines.next().unwrap().unwrap();
    let c = Config::default();
    let tokens: Value = http()
        .post(format!("{api}/restapi/oauth/token"))
        .basic_auth(&c.client_id, Some(&c.client_secret))
        .form(&[("grant_type", JWT_GRANT), ("assertion", c.jwt.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!("{media}/restapi/v1.0/account/~/recording/{SEED_REC}/content");
    let mut statuses = Vec::new();
    let r = loop {
        let r = get(&url, &access(&tokens)).await;
        statuses.push(r.status().as_u16());
        if r.status() == StatusCode::OK || statuses.len() > 5 {
            break r;
        }
    };
    assert_eq!(statuses, [404, 503, 200]);
    assert!(!r.headers().contains_key("content-length"));
    assert_eq!(hdr(&r, "accept-ranges"), "bytes");
}
