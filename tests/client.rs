//! The RingCentral client against the in-process emulator (and, where the emulator cannot
//! misbehave in the needed way, a tiny hand-made server).
//!
//! Token lifetimes and rate windows are short so that every test runs in seconds. Costs are
//! proven with the emulator's own request counters, not the client's.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringfs::api::{
    ApiError, BodyEnd, Client, ClientConfig, Credentials, MediaStream, Priority, Scope,
};
use ringfs::emulator::{CallInfo, Config, Emulator, Faults, MediaBehaviour, RateLimits};
use ringfs::media::{Media, MediaConfig, MediaError, RecordingKey};

fn creds(emu: &Emulator) -> Credentials {
    let d = Config::default();
    Credentials {
        server_url: emu.api_url(),
        client_id: d.client_id,
        client_secret: d.client_secret,
        jwt: d.jwt,
    }
}

fn config(emu: &Emulator) -> ClientConfig {
    let mut c = ClientConfig::new(creds(emu));
    c.backoff_base = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c.stall_timeout = Duration::from_secs(5);
    c
}

fn client(emu: &Emulator) -> Client {
    Client::new(config(emu)).unwrap()
}

async fn start(cfg: Config) -> Emulator {
    Emulator::start(cfg).await.expect("emulator starts")
}

fn ts(t: jiff::Timestamp, secs: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(t.as_second() + secs).unwrap()
}

const DAY: i64 = 86_400;

/// A recording that can be fetched now, with a size in `lo..=hi` bytes.
fn recording(emu: &Emulator, lo: u64, hi: u64) -> CallInfo {
    let now = jiff::Timestamp::now();
    emu.calls()
        .into_iter()
        .filter(|c| c.recording_id.is_some() && c.fetchable_at < now)
        .filter(|c| c.recording_len.is_some_and(|l| (lo..=hi).contains(&l)))
        .min_by_key(|c| c.recording_len)
        .expect("a recording of that size")
}

/// One response's body, to its clean end.
async fn read_all(s: &mut MediaStream) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    while let Some(b) = s.next_chunk().await? {
        assert_eq!(
            s.position(),
            s.position().max(out.len() as u64 + b.len() as u64)
        );
        out.extend_from_slice(&b);
    }
    Ok(out)
}

/// The media layer over this client: where downloads are resumed and requests bounded.
fn media_over(c: &Client) -> Arc<Media> {
    let config = MediaConfig {
        read_timeout: Duration::from_secs(30),
        ..MediaConfig::default()
    };
    Media::new(Arc::new(ringfs::source::ApiMedia::new(c.clone())), config)
}

/// A whole recording through the media layer, in reads of 128 KiB as the kernel makes them.
async fn read_media(media: &Media, id: &str, uri: &str) -> Result<Vec<u8>, MediaError> {
    let k = RecordingKey {
        id: id.into(),
        content_uri: uri.into(),
    };
    media.open(&k, Priority::Interactive).await?;
    let mut out = Vec::new();
    loop {
        let b = media
            .read(&k, out.len() as u64, 128 << 10, Priority::Interactive)
            .await?;
        if b.is_empty() {
            break;
        }
        out.extend_from_slice(&b);
    }
    media.close(&k);
    Ok(out)
}

/// Heavy group limited to `heavy` per `window_s` seconds, with a penalty of `penalty_s`.
fn rate(heavy: u32, window_s: u64, penalty_s: u64) -> RateLimits {
    RateLimits {
        window: Duration::from_secs(window_s),
        penalty: Duration::from_secs(penalty_s),
        heavy,
        ..RateLimits::default()
    }
}

/// Limits generous enough that a test about something else never waits for the budget.
fn roomy() -> RateLimits {
    RateLimits {
        window: Duration::from_secs(1),
        penalty: Duration::from_secs(5),
        heavy: 200,
        auth: 50,
        ..RateLimits::default()
    }
}

// ---------------------------------------------------------------- auth

#[tokio::test]
async fn restart_with_stored_tokens_spends_no_auth_request() {
    use std::os::unix::fs::PermissionsExt;
    let emu = start(Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state/tokens.json");
    let mut cfg = config(&emu);
    cfg.state_file = Some(state.clone());

    let first = Client::new(cfg.clone()).unwrap();
    assert_eq!(
        emu.stats().endpoint("token"),
        0,
        "Client::new sends nothing"
    );
    first.login().await.unwrap();
    first
        .recording_meta(
            &recording(&emu, 1, u64::MAX).recording_id.unwrap(),
            Priority::Interactive,
        )
        .await
        .unwrap();
    assert_eq!(emu.stats().endpoint("token"), 1);
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(first);

    // A "remount": a new client with the same state file.
    let second = Client::new(cfg).unwrap();
    second.login().await.unwrap();
    let now = jiff::Timestamp::now();
    second
        .list_recorded(Scope::Extension, ts(now, -DAY), now, Priority::Interactive)
        .await
        .unwrap();
    assert_eq!(
        emu.stats().endpoint("token"),
        1,
        "stored tokens were reused: 0 Auth requests"
    );
    assert_eq!(second.stats().logins + second.stats().refreshes, 0);
    assert_eq!(emu.stats().by_group.get("Auth").copied(), Some(1));
}

#[tokio::test]
async fn one_refresh_for_many_concurrent_requests_and_expiry_mid_download() {
    // 6 s tokens (renewed 1.2 s early): the eight requests after expiry have 4.8 s to share one
    // refresh, enough on a loaded machine (2 s tokens were not).
    let emu = start(Config {
        access_ttl: Duration::from_secs(6),
        rate: roomy(),
        ..Config::default()
    })
    .await;
    let c = client(&emu);
    c.login().await.unwrap();
    assert_eq!(emu.stats().endpoint("token"), 1);
    tokio::time::sleep(Duration::from_millis(6100)).await;
    // Ten requests at once after expiry: exactly one refresh, and nobody reuses a refresh token.
    let rec = recording(&emu, 1, u64::MAX).recording_id.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, rec) = (c.clone(), rec.clone());
        tasks.push(tokio::spawn(async move {
            c.recording_meta(&rec, Priority::Background).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(emu.stats().endpoint("token"), 2);
    assert_eq!((c.stats().logins, c.stats().refreshes), (1, 1));

    // Token expiry in the middle of a download: ~9 s of throttled media with a 6 s token, cut
    // every third of the way so that the resumes need renewed tokens.
    let info = recording(&emu, 60_000, 400_000);
    let len = info.recording_len.unwrap();
    emu.set_faults(Faults {
        drop_after_bytes: Some(len / 3 + 1),
        max_bytes_per_sec: Some(len / 9),
        ..Faults::default()
    });
    let before = c.stats();
    let id = info.recording_id.as_deref().unwrap();
    let uri = c.recording_content_url(id).expect("media host learned");
    let media = media_over(&c);
    let got = read_media(&media, id, &uri).await.unwrap();
    assert_eq!(got, emu.recording_bytes(id).unwrap());
    let after = c.stats();
    assert!(
        after.refreshes > before.refreshes,
        "the token was renewed during the download: {after:?}"
    );
    assert!(media.stats().resumes >= 2, "{:?}", media.stats());
    assert_eq!(after.logins, 1);
}

#[tokio::test]
async fn refresh_token_reuse_is_rejected_and_recovered() {
    // 20 s tokens are renewed 4 s early: B and C find A's first token fresh, and A's renewed
    // one stays fresh for 16 s, slack enough for a loaded CI machine (5 s tokens were not).
    let emu = start(Config {
        access_ttl: Duration::from_secs(20),
        rate: roomy(),
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared.json");
    let copy = dir.path().join("copy.json");
    let mut cfg = config(&emu);
    cfg.state_file = Some(shared.clone());
    let a = Client::new(cfg.clone()).unwrap();
    a.login().await.unwrap();
    std::fs::copy(&shared, &copy).unwrap();
    // B shares A's state file (a second mount); C has a copy of it (a restored backup).
    let b = Client::new(cfg.clone()).unwrap();
    b.login().await.unwrap();
    let mut cfg_c = cfg.clone();
    cfg_c.state_file = Some(copy);
    let c = Client::new(cfg_c).unwrap();
    c.login().await.unwrap();
    assert_eq!(
        emu.stats().endpoint("token"),
        1,
        "B and C loaded A's tokens"
    );

    tokio::time::sleep(Duration::from_millis(16_100)).await;
    let rec = recording(&emu, 1, u64::MAX).recording_id.unwrap();
    a.recording_meta(&rec, Priority::Interactive).await.unwrap(); // A refreshes (the token is used up)
    assert_eq!(a.stats().refreshes, 1);
    // B presents the used refresh token: rejected; B adopts what A stored, no JWT login.
    b.recording_meta(&rec, Priority::Interactive).await.unwrap();
    assert_eq!((b.stats().refreshes, b.stats().logins), (0, 0));
    // C presents it too: rejected, and its own file has nothing fresher: JWT login.
    c.recording_meta(&rec, Priority::Interactive).await.unwrap();
    assert_eq!((c.stats().refreshes, c.stats().logins), (0, 1));
    // 1 login (A) + 1 refresh (A) + 1 rejected (B) + 1 rejected and 1 login (C).
    assert_eq!(emu.stats().endpoint("token"), 5);
}

#[tokio::test]
async fn without_refresh_tokens_the_client_logs_in_again() {
    let emu = start(Config {
        access_ttl: Duration::from_secs(1),
        issue_refresh_tokens: false,
        ..Config::default()
    })
    .await;
    let c = client(&emu);
    let rec = recording(&emu, 1, u64::MAX).recording_id.unwrap();
    c.recording_meta(&rec, Priority::Interactive).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.recording_meta(&rec, Priority::Interactive).await.unwrap();
    let s = c.stats();
    assert_eq!((s.logins, s.refreshes, s.unauthorized), (2, 0, 0), "{s:?}");
    assert_eq!(emu.stats().endpoint("token"), 2);
}

#[tokio::test]
async fn revoked_token_leads_to_a_new_login() {
    let emu = start(Config {
        rate: roomy(),
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("t.json");
    let mut cfg = config(&emu);
    cfg.state_file = Some(state.clone());
    let c = Client::new(cfg.clone()).unwrap();
    c.login().await.unwrap();
    // Someone (an admin, another device) revokes the session.
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let session = stored["sessions"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    let access = session["access_token"].as_str().unwrap().to_owned();
    let http = ringfs::api::http_client_builder()
        .no_proxy()
        .build()
        .unwrap();
    let r = http
        .post(format!("{}/restapi/oauth/revoke", emu.api_url()))
        .basic_auth(
            &cfg.credentials.client_id,
            Some(&cfg.credentials.client_secret),
        )
        .form(&[("token", access.as_str())])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    let rec = recording(&emu, 1, u64::MAX).recording_id.unwrap();
    c.recording_meta(&rec, Priority::Interactive).await.unwrap();
    let s = c.stats();
    assert_eq!(s.unauthorized, 1, "{s:?}");
    assert_eq!(
        s.logins, 2,
        "refresh of a revoked session fails; JWT login: {s:?}"
    );

    // logout revokes and forgets.
    c.logout().await.unwrap();
    assert_eq!(emu.stats().endpoint("revoke"), 2);
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert!(stored["sessions"].as_object().unwrap().is_empty());
}

#[tokio::test]
async fn bad_credentials_are_a_service_error_without_retries() {
    let emu = start(Config::default()).await;
    let mut cfg = config(&emu);
    cfg.credentials.jwt = "not-the-jwt".into();
    let e = Client::new(cfg).unwrap().login().await.unwrap_err();
    assert!(e.is_service(), "{e}");
    assert_eq!((e.status(), e.error_code()), (Some(400), Some("OAU-140")));
    assert_eq!(emu.stats().endpoint("token"), 1);
}

// ---------------------------------------------------------------- call log

#[tokio::test]
async fn listing_n_records_spends_ceil_n_over_1000_requests() {
    let emu = start(Config {
        calls: 3000,
        ..Config::default()
    })
    .await;
    let c = client(&emu);
    let now = jiff::Timestamp::now();
    let (from, to) = (ts(now, -100 * DAY), ts(now, -3600));
    let records = c
        .list_recorded(Scope::Account, from, to, Priority::Background)
        .await
        .unwrap();

    let expected: Vec<_> = emu
        .calls()
        .into_iter()
        .filter(|c| c.recording_id.is_some() && c.start >= from && c.start < to)
        .collect();
    assert!(expected.len() > 2000, "{}", expected.len());
    assert_eq!(records.len(), expected.len());
    // ceil(N/1000) pages, plus only the retries the client counted. A loaded CI machine once saw
    // 6 requests for 3 pages with 3 counted retries (page requests that timed out while four
    // test threads shared two cores): retries are legitimate spending, but every request beyond
    // the pages must be one the client knows it retried.
    let pages = (records.len() as u64).div_ceil(1000);
    let spent = emu.stats().call_log();
    let stats = c.stats();
    assert_eq!(
        spent,
        pages + stats.retries,
        "{spent} call-log requests for {pages} pages: {stats:?}"
    );
    if stats.retries > 0 {
        eprintln!("note: {} retries while listing: {stats:?}", stats.retries);
    }
    let mut ids: Vec<_> = records.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), records.len());
    for r in &records {
        let truth = expected
            .iter()
            .find(|c| c.call_log_id == r.id)
            .expect("record of a real call");
        assert_eq!(r.session_id.as_str(), truth.session_id);
        assert_eq!(r.start_time, truth.start);
        assert_eq!(r.inbound, truth.inbound);
        assert_eq!(r.duration, truth.duration_s);
        assert_eq!(
            r.recordings.len(),
            1,
            "record and legs carry the same recording once"
        );
        assert_eq!(
            Some(r.recordings[0].id.as_str()),
            truth.recording_id.as_deref()
        );
        assert_eq!(r.raw.value()["id"].as_str(), Some(r.id.as_str()));
    }
}

#[tokio::test]
async fn find_session_and_recording_metadata() {
    let emu = start(Config {
        format: ringfs::emulator::AudioFormat::Mixed,
        ..Config::default()
    })
    .await;
    let c = client(&emu);
    let info = recording(&emu, 1, u64::MAX);
    let now = jiff::Timestamp::now();
    let found = c
        .find_session(
            Scope::Account,
            &info.session_id,
            ts(now, -95 * DAY),
            Priority::Interactive,
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].session_id.as_str(), info.session_id);
    assert_eq!(found[0].from.phone_number, info.from_number);
    let rec = &found[0].recordings[0];
    assert_eq!(Some(rec.id.as_str()), info.recording_id.as_deref());

    let meta = c
        .recording_meta(rec.id.as_str(), Priority::Interactive)
        .await
        .unwrap();
    assert_eq!(meta.content_uri, rec.content_uri);
    assert_eq!(meta.content_type.as_deref(), info.content_type);
    // The manual URL (approach 2) serves the same bytes as the contentUri.
    let manual = c.recording_content_url(rec.id.as_str()).unwrap();
    assert!(manual.starts_with(&emu.media_url()), "{manual}");
    let mut s = c
        .open_media(&manual, 0, Priority::Interactive)
        .await
        .unwrap();
    assert_eq!(s.content_type(), info.content_type);
    assert_eq!(s.total_len(), info.recording_len);
    assert_eq!(
        read_all(&mut s).await.unwrap(),
        emu.recording_bytes(rec.id.as_str()).unwrap()
    );

    // Not found is the service saying no, and it is not retried.
    let before = emu.stats().endpoint("recording-meta");
    let e = c
        .recording_meta("999999999999", Priority::Interactive)
        .await
        .unwrap_err();
    assert!(e.is_not_found() && e.is_service(), "{e}");
    assert_eq!(e.error_code(), Some("CMN-102"));
    assert_eq!(emu.stats().endpoint("recording-meta"), before + 1);
}

#[tokio::test]
async fn extension_scope_and_forbidden_account_scope() {
    let emu = start(Config {
        admin: false,
        ..Config::default()
    })
    .await;
    let c = client(&emu);
    let now = jiff::Timestamp::now();
    let e = c
        .list_recorded(Scope::Account, ts(now, -DAY), now, Priority::Interactive)
        .await
        .unwrap_err();
    assert!(e.is_forbidden(), "{e}");
    let mine = c
        .list_recorded(
            Scope::Extension,
            ts(now, -100 * DAY),
            ts(now, -3600),
            Priority::Interactive,
        )
        .await
        .unwrap();
    assert!(!mine.is_empty());
    let owner = emu
        .calls()
        .into_iter()
        .find(|x| x.call_log_id == mine[0].id)
        .unwrap()
        .extension_id;
    assert!(mine.iter().all(|r| {
        emu.calls()
            .iter()
            .any(|x| x.call_log_id == r.id && x.extension_id == owner)
    }));
}

#[tokio::test]
async fn malformed_json_is_an_error_not_a_panic() {
    let emu = start(Config::default()).await;
    let c = client(&emu);
    c.login().await.unwrap();
    emu.set_faults(Faults {
        malformed_json_fraction: 1.0,
        ..Faults::default()
    });
    let now = jiff::Timestamp::now();
    let e = c
        .list_recorded(
            Scope::Account,
            ts(now, -30 * DAY),
            now,
            Priority::Interactive,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::Decode { .. }), "{e}");
    assert!(!e.is_service());
    assert_eq!(emu.stats().call_log(), 1, "a decode error is not retried");
}

// ---------------------------------------------------------------- budget

#[tokio::test]
async fn burst_of_50_under_heavy_10_per_window_meets_no_429() {
    let emu = start(Config {
        rate: rate(10, 1, 5),
        ..Config::default()
    })
    .await;
    let c = client(&emu);
    c.login().await.unwrap();
    let ids: Vec<String> = emu
        .calls()
        .into_iter()
        .filter(|c| c.fetchable_at < jiff::Timestamp::now())
        .filter_map(|c| c.recording_id)
        .take(50)
        .collect();
    assert_eq!(ids.len(), 50);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let c = c.clone();
        let prio = if i % 3 == 0 {
            Priority::Interactive
        } else {
            Priority::Background
        };
        tasks.push(tokio::spawn(
            async move { c.recording_meta(&id, prio).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let stats = emu.stats();
    assert_eq!(stats.throttled, 0, "{stats:?}");
    assert_eq!(stats.endpoint("recording-meta"), 50);
    assert_eq!(c.stats().throttled, 0);
    assert_eq!(c.stats().requests("Heavy"), 50);
    // 50 requests at 10 per window need at least 4 further windows.
    assert!(t0.elapsed() >= Duration::from_secs(4), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn interactive_requests_overtake_background_ones() {
    let emu = start(Config {
        rate: rate(2, 1, 5),
        ..Config::default()
    })
    .await;
    let c = client(&emu);
    c.login().await.unwrap();
    let ids: Vec<String> = emu
        .calls()
        .into_iter()
        .filter(|c| c.fetchable_at < jiff::Timestamp::now())
        .filter_map(|c| c.recording_id)
        .take(7)
        .collect();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let (c, order) = (c.clone(), order.clone());
        let prio = if i == 6 {
            Priority::Interactive
        } else {
            Priority::Background
        };
        tasks.push(tokio::spawn(async move {
            // The interactive request arrives last.
            tokio::time::sleep(Duration::from_millis(if i == 6 { 100 } else { i as u64 })).await;
            c.recording_meta(&id, prio).await.unwrap();
            order.lock().unwrap().push(i);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    let pos = order.iter().position(|&i| i == 6).unwrap();
    assert!(
        pos <= 3,
        "interactive finished at position {pos}: {order:?}"
    );
    assert_eq!(emu.stats().throttled, 0);
}

#[tokio::test]
async fn forced_429_holds_the_group_for_retry_after() {
    let emu = start(Config::default()).await;
    let c = client(&emu);
    c.login().await.unwrap();
    let rec = recording(&emu, 1, u64::MAX).recording_id.unwrap();
    emu.set_faults(Faults {
        force_429_fraction: 1.0,
        force_429_retry_after: Some(2),
        ..Faults::default()
    });
    let t0 = Instant::now();
    let first = {
        let (c, rec) = (c.clone(), rec.clone());
        tokio::spawn(async move { c.recording_meta(&rec, Priority::Interactive).await })
    };
    while emu.stats().throttled == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    emu.set_faults(Faults::default());
    // Another request in the same group during the hold waits too.
    let second = {
        let (c, rec) = (c.clone(), rec.clone());
        tokio::spawn(async move { c.recording_meta(&rec, Priority::Interactive).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        emu.stats().endpoint("recording-meta"),
        1,
        "nothing sent in the group during the hold"
    );
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(2));
    assert_eq!(emu.stats().endpoint("recording-meta"), 3);
    assert_eq!(c.stats().throttled, 1);
    assert_eq!(c.stats().retries, 1);
}

#[tokio::test]
async fn a_real_penalty_is_never_extended() {
    // A 10 s window, so that the other program's ten requests and our first one surely fall
    // in one window however slow the machine; a 2 s penalty keeps the test short.
    let emu = start(Config {
        rate: rate(10, 10, 2),
        ..Config::default()
    })
    .await;
    let c = client(&emu);
    c.login().await.unwrap();
    // Another program with the same credentials spends the whole Heavy window.
    let http = ringfs::api::http_client_builder()
        .no_proxy()
        .build()
        .unwrap();
    for _ in 0..10 {
        http.get(format!(
            "{}/restapi/v1.0/account/~/recording/1",
            emu.api_url()
        ))
        .send()
        .await
        .unwrap();
    }
    let ids: Vec<String> = emu
        .calls()
        .into_iter()
        .filter(|c| c.fetchable_at < jiff::Timestamp::now())
        .filter_map(|c| c.recording_id)
        .take(5)
        .collect();
    let mut tasks = Vec::new();
    for id in ids {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.recording_meta(&id, Priority::Background).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let s = emu.stats();
    assert_eq!(
        s.throttled, 1,
        "one 429 (the one that starts the penalty): {s:?}"
    );
    assert_eq!(s.penalty_violations, 0, "{s:?}");
    assert_eq!(c.stats().throttled, 1);
}

// ---------------------------------------------------------------- retries

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_reported() {
    let emu = start(Config {
        rate: roomy(),
        ..Config::default()
    })
    .await;
    let mut cfg = config(&emu);
    cfg.max_retries = 3;
    let c = Client::new(cfg).unwrap();
    c.login().await.unwrap();
    let rec = recording(&emu, 1, u64::MAX).recording_id.unwrap();
    emu.set_faults(Faults {
        error_5xx_fraction: 1.0,
        ..Faults::default()
    });
    let e = c
        .recording_meta(&rec, Priority::Interactive)
        .await
        .unwrap_err();
    assert!(e.status().is_some_and(|s| s >= 500), "{e}");
    assert_eq!(
        emu.stats().endpoint("recording-meta"),
        4,
        "1 try + 3 retries"
    );
    assert_eq!(c.stats().retries, 3);

    // Half the answers fail: with enough retries every request gets through.
    let mut cfg = config(&emu);
    cfg.max_retries = 12;
    let patient = Client::new(cfg).unwrap();
    emu.set_faults(Faults {
        error_5xx_fraction: 0.5,
        ..Faults::default()
    });
    for _ in 0..4 {
        patient
            .recording_meta(&rec, Priority::Interactive)
            .await
            .unwrap();
    }
    emu.set_faults(Faults::default());

    emu.set_faults(Faults {
        unreachable: true,
        ..Faults::default()
    });
    let e = c
        .recording_meta(&rec, Priority::Interactive)
        .await
        .unwrap_err();
    assert!(!e.is_service() && e.status().is_none(), "{e}");
}

// ---------------------------------------------------------------- media

#[tokio::test]
async fn dropped_media_connections_resume_to_identical_bytes() {
    for media in [
        MediaBehaviour::default(),
        MediaBehaviour {
            omit_content_length: true,
            ..MediaBehaviour::default()
        },
        MediaBehaviour {
            x_wav: true,
            ..MediaBehaviour::default()
        },
        MediaBehaviour {
            omit_content_length: true,
            ignore_range: true,
            x_wav: true,
            ..MediaBehaviour::default()
        },
    ] {
        let emu = start(Config {
            media: media.clone(),
            format: ringfs::emulator::AudioFormat::Wav,
            rate: roomy(),
            ..Config::default()
        })
        .await;
        let c = client(&emu);
        let info = recording(&emu, 100_000, 2_000_000);
        let id = info.recording_id.clone().unwrap();
        let truth = emu.recording_bytes(&id).unwrap();
        let len = truth.len() as u64;
        let uri = c
            .recording_meta(&id, Priority::Interactive)
            .await
            .unwrap()
            .content_uri;
        // One response, whole: what its headers say.
        let mut s = c.open_media(&uri, 0, Priority::Interactive).await.unwrap();
        assert_eq!(
            s.content_type(),
            Some(if media.x_wav {
                "audio/x-wav"
            } else {
                "audio/wav"
            })
        );
        assert_eq!(
            s.total_len(),
            if media.omit_content_length {
                None
            } else {
                Some(len)
            }
        );
        assert_eq!(s.end(), BodyEnd::Content);
        assert!(read_all(&mut s).await.unwrap() == truth);
        assert_eq!(
            (s.position(), s.total_len()),
            (len, Some(len)),
            "a clean end tells the length"
        );

        // Every response cut after a fifth of its body.
        emu.set_faults(Faults {
            drop_after_bytes: Some(len / 5),
            ..Faults::default()
        });
        emu.reset_stats();
        let m = media_over(&c);
        if media.ignore_range {
            // Every answer starts again at byte 0 and breaks at the same byte: after the first
            // drop no request brings a new byte, and the read fails within the budget.
            let e = read_media(&m, &id, &uri).await.unwrap_err();
            assert!(
                matches!(&e, MediaError::Failed(msg) if msg.contains("gave up")),
                "{e}"
            );
            assert_eq!(
                emu.stats().media(),
                1 + ringfs::media::MAX_STRIKES as u64,
                "one drop, then the strikes"
            );
            emu.set_faults(Faults::default());
            continue;
        }
        let got = read_media(&m, &id, &uri).await.unwrap();
        assert!(
            got == truth,
            "{media:?}: {} of {} bytes",
            got.len(),
            truth.len()
        );
        let k = m.known(&id).unwrap();
        assert_eq!(k.size, Some(len));
        let resumes = m.stats().resumes;
        assert!((4..=5).contains(&resumes), "{media:?} {:?}", m.stats());
        assert_eq!(emu.stats().media(), 1 + resumes);
        assert_eq!(emu.stats().throttled, 0);

        // One response at an offset, at the very end, and past it.
        emu.set_faults(Faults::default());
        let mut s = c
            .open_media(&uri, len - 1000, Priority::Interactive)
            .await
            .unwrap();
        assert_eq!(s.total_len(), Some(len), "Content-Range tells the total");
        assert_eq!(
            read_all(&mut s).await.unwrap(),
            truth[(len - 1000) as usize..]
        );
        for at in [len, len + 10] {
            let mut s = c.open_media(&uri, at, Priority::Interactive).await.unwrap();
            assert_eq!(
                (s.total_len(), s.end()),
                (Some(len), BodyEnd::Content),
                "416 with bytes */{len}"
            );
            assert!(s.next_chunk().await.unwrap().is_none());
        }
    }
}

#[tokio::test]
async fn range_ignored_by_the_server_is_skipped() {
    let emu = start(Config {
        media: MediaBehaviour {
            ignore_range: true,
            ..MediaBehaviour::default()
        },
        rate: roomy(),
        ..Config::default()
    })
    .await;
    let c = client(&emu);
    let info = recording(&emu, 100_000, 2_000_000);
    let id = info.recording_id.unwrap();
    let truth = emu.recording_bytes(&id).unwrap();
    let len = truth.len() as u64;
    let uri = c
        .recording_meta(&id, Priority::Interactive)
        .await
        .unwrap()
        .content_uri;
    // Jump ahead: the 200 answer's first bytes are skipped.
    let mut s = c
        .open_media(&uri, 12_345, Priority::Interactive)
        .await
        .unwrap();
    assert_eq!(s.position(), 12_345);
    assert_eq!(read_all(&mut s).await.unwrap(), truth[12_345..]);
    // Past the end: the whole body is skipped, and its end tells the length.
    let mut s = c
        .open_media(&uri, len + 5, Priority::Interactive)
        .await
        .unwrap();
    assert!(s.next_chunk().await.unwrap().is_none());
    assert_eq!(s.total_len(), Some(len));
    // A drop mid-way is resumed from the start of a 200 and skipped to where it was.
    emu.set_faults(Faults {
        drop_after_bytes: Some(len / 2),
        drop_fraction: 0.5,
        ..Faults::default()
    });
    let m = media_over(&c);
    let got = read_media(&m, &id, &uri).await.unwrap();
    assert!(got == truth);
}

#[tokio::test]
async fn a_paused_reader_is_not_a_stall() {
    let emu = start(Config::default()).await;
    let mut cfg = config(&emu);
    cfg.stall_timeout = Duration::from_secs(1);
    let c = Client::new(cfg).unwrap();
    let info = recording(&emu, 200_000, 2_000_000);
    let id = info.recording_id.unwrap();
    let truth = emu.recording_bytes(&id).unwrap();
    let uri = c
        .recording_meta(&id, Priority::Interactive)
        .await
        .unwrap()
        .content_uri;
    // The reader pauses for 3 stall timeouts; the healthy connection is kept.
    let mut s = c.open_media(&uri, 0, Priority::Interactive).await.unwrap();
    let mut got = s.next_chunk().await.unwrap().unwrap().to_vec();
    tokio::time::sleep(Duration::from_secs(3)).await;
    got.extend(read_all(&mut s).await.unwrap());
    assert!(got == truth);
    assert_eq!(emu.stats().media(), 1);
}

/// A media server whose body stalls: detected, resumed, and given up within the media layer's
/// request budget.
#[tokio::test]
async fn a_stalled_body_is_resumed_then_reported() {
    use axum::{
        Router, body::Body, http::HeaderMap, response::Response, routing::get, routing::post,
    };
    let hits = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let h2 = hits.clone();
    let media = move |headers: HeaderMap| {
        let hits = h2.clone();
        async move {
            hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // 100 bytes of 1000, then nothing (the connection stays open) on the first
            // request; resumes get their headers and then nothing at all.
            let first = headers.get("range").is_none();
            let head: Vec<Result<bytes::Bytes, std::io::Error>> = if first {
                vec![Ok(bytes::Bytes::from(vec![1u8; 100]))]
            } else {
                vec![]
            };
            let s = futures_util::StreamExt::chain(
                futures_util::stream::iter(head),
                futures_util::stream::pending(),
            );
            let mut b = Response::builder().header("content-type", "audio/mpeg");
            b = if first {
                b.header("content-length", "1000")
            } else {
                b.status(206).header("content-range", "bytes 100-999/1000")
            };
            b.body(Body::from_stream(s)).unwrap()
        }
    };
    let app = Router::new()
        .route(
            "/restapi/oauth/token",
            post(|| async {
                axum::Json(serde_json::json!({"access_token": "tok-mini", "expires_in": 3600}))
            }),
        )
        .route("/media/x", get(media));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let mut cfg = ClientConfig::new(Credentials {
        server_url: base.clone(),
        client_id: "a".into(),
        client_secret: "b".into(),
        jwt: "c".into(),
    });
    cfg.stall_timeout = Duration::from_millis(200);
    cfg.backoff_base = Duration::from_millis(10);
    let c = Client::new(cfg).unwrap();
    // One response: 100 bytes, then the stall is an error of that response (no reconnect).
    let uri = format!("{base}/media/x");
    let mut s = c.open_media(&uri, 0, Priority::Interactive).await.unwrap();
    assert_eq!(s.next_chunk().await.unwrap().unwrap().len(), 100);
    let t0 = Instant::now();
    let e = s.next_chunk().await.unwrap_err();
    assert!(matches!(e, ApiError::Timeout { .. }), "{e}");
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(s.position(), 100);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Through the media layer: the stall after new bytes is a drop (one resume), and resumes
    // that bring nothing are strikes: the read fails after MAX_STRIKES of them.
    let m = media_over(&c);
    let e = read_media(&m, "x", &uri).await.unwrap_err();
    assert!(
        matches!(&e, MediaError::Failed(msg) if msg.contains("gave up")),
        "{e}"
    );
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1 + 1 + ringfs::media::MAX_STRIKES as u64
    );
    // And it cools down: the next read spends nothing.
    assert!(read_media(&m, "x", &uri).await.is_err());
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1 + 1 + ringfs::media::MAX_STRIKES as u64
    );
}

/// A media server that changes the content between two requests: the resume must notice.
#[tokio::test]
async fn resumed_bytes_must_belong_to_the_same_content() {
    use axum::{
        Router, body::Body, http::HeaderMap, response::Response, routing::get, routing::post,
    };
    async fn token() -> axum::Json<serde_json::Value> {
        axum::Json(serde_json::json!({"access_token": "tok-mini", "expires_in": 3600}))
    }
    async fn media(headers: HeaderMap) -> Response {
        match headers.get("range") {
            None => {
                // 1000 bytes announced, 100 sent, then the connection drops.
                // The drop comes a moment later, so the headers and the 100 bytes reach the client.
                let s = futures_util::StreamExt::chain(
                    futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(
                        vec![7u8; 100],
                    ))]),
                    futures_util::stream::once(async {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Err(std::io::Error::other("drop"))
                    }),
                );
                Response::builder()
                    .header("content-type", "audio/mpeg")
                    .header("content-length", "1000")
                    .body(Body::from_stream(s))
                    .unwrap()
            }
            Some(_) => Response::builder()
                .status(206)
                .header("content-type", "audio/mpeg")
                .header("content-range", "bytes 100-1999/2000")
                .body(Body::from(vec![8u8; 1900]))
                .unwrap(),
        }
    }
    let app = Router::new()
        .route("/restapi/oauth/token", post(token))
        .route("/media/x", get(media));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

    let mut cfg = ClientConfig::new(Credentials {
        server_url: base.clone(),
        client_id: "a".into(),
        client_secret: "b".into(),
        jwt: "c".into(),
    });
    cfg.backoff_base = Duration::from_millis(10);
    let c = Client::new(cfg).unwrap();
    let m = media_over(&c);
    let e = read_media(&m, "x", &format!("{base}/media/x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, MediaError::Failed(msg) if msg.contains("length was 1000") || msg.contains("length is 2000")),
        "{e}"
    );
    // Nothing of the other content was kept or served.
    assert_eq!(m.known("x").and_then(|k| k.size), Some(1000));
    let k = RecordingKey {
        id: "x".into(),
        content_uri: format!("{base}/media/x"),
    };
    let head = m.read(&k, 0, 100, Priority::Interactive).await.unwrap();
    assert!(head.iter().all(|b| *b == 7));
}

/// A call-log page with broken records loses only those.
#[tokio::test]
async fn broken_records_are_skipped_and_the_rest_kept() {
    use axum::{Router, routing::get, routing::post};
    let app = Router::new()
        .route(
            "/restapi/oauth/token",
            post(|| async { axum::Json(serde_json::json!({"access_token": "tok-mini", "expires_in": 3600})) }),
        )
        .route(
            "/restapi/v1.0/account/~/extension/~/call-log",
            get(|| async {
                axum::Json(serde_json::json!({"records": [
                    {"id": "1", "sessionId": "10", "startTime": "2024-01-01T00:00:00Z",
                     "recording": {"id": "r1", "contentUri": "http://127.0.0.1:9/r1"}, "unknown": [1]},
                    {"id": "2", "startTime": "2024-01-01T00:00:00Z"},
                    {"id": "3", "sessionId": "30", "startTime": 12},
                    {"id": "4", "sessionId": "40", "startTime": "2024-01-01T00:00:01.5Z", "from": null}
                ], "navigation": {}}))
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let c = Client::new(ClientConfig::new(Credentials {
        server_url: base,
        client_id: "a".into(),
        client_secret: "b".into(),
        jwt: "c".into(),
    }))
    .unwrap();
    let now = jiff::Timestamp::now();
    let r = c
        .list_recorded(Scope::Extension, ts(now, -DAY), now, Priority::Interactive)
        .await
        .unwrap();
    let ids: Vec<_> = r.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["1", "4"]);
    assert_eq!(c.stats().records_skipped, 2);
    assert_eq!(r[0].recordings[0].id, "r1");
}

// ---------------------------------------------------------------- secrets

/// A `MakeWriter` collecting everything logged.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test]
async fn logs_errors_and_debug_output_never_show_tokens_or_secrets() {
    use tracing_subscriber::prelude::*;
    let capture = Capture::default();
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::TRACE)
        .with_target("ringfs::emulator", tracing::level_filters::LevelFilter::OFF);
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(capture.clone())
            .with_ansi(false)
            .with_filter(filter),
    );
    // Current-thread runtime: every task of this test runs on this thread and logs here.
    let _guard = tracing::subscriber::set_default(subscriber);

    let emu = start(Config {
        access_ttl: Duration::from_secs(2),
        rate: roomy(),
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("t.json");
    let mut cfg = config(&emu);
    cfg.state_file = Some(state.clone());
    let c = Client::new(cfg.clone()).unwrap();
    let mut secrets: Vec<String> = vec![
        cfg.credentials.client_secret.clone(),
        cfg.credentials.jwt.clone(),
    ];
    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            cfg.credentials.client_id, cfg.credentials.client_secret
        ))
    };
    secrets.push(basic);
    let collect_tokens = |secrets: &mut Vec<String>| {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        for s in v["sessions"].as_object().unwrap().values() {
            for k in ["access_token", "refresh_token"] {
                if let Some(t) = s[k].as_str() {
                    secrets.push(t.to_owned());
                }
            }
        }
    };
    let mut texts = Vec::new();

    c.login().await.unwrap();
    collect_tokens(&mut secrets);
    let now = jiff::Timestamp::now();
    let records = c
        .list_recorded(
            Scope::Account,
            ts(now, -30 * DAY),
            now,
            Priority::Interactive,
        )
        .await
        .unwrap();
    texts.push(format!("{:?}", &records[..3]));
    let info = recording(&emu, 20_000, 200_000);
    let id = info.recording_id.unwrap();
    let meta = c.recording_meta(&id, Priority::Interactive).await.unwrap();
    // Expire mid-flow: refresh, cut downloads, a 401 from a replaced token, errors of all kinds.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    emu.set_faults(Faults {
        drop_after_bytes: Some(8_000),
        ..Faults::default()
    });
    let s = c
        .open_media(&meta.content_uri, 0, Priority::Interactive)
        .await
        .unwrap();
    texts.push(format!("{s:?}"));
    drop(s);
    read_media(&media_over(&c), &id, &meta.content_uri)
        .await
        .unwrap();
    collect_tokens(&mut secrets);
    emu.set_faults(Faults::default());
    texts.push(
        c.recording_meta("nope", Priority::Interactive)
            .await
            .unwrap_err()
            .to_string(),
    );
    let mut bad = cfg.clone();
    bad.state_file = None;
    bad.credentials.client_secret.push('x');
    let e = Client::new(bad.clone()).unwrap().login().await.unwrap_err();
    texts.push(format!("{e} {e:?}"));
    bad.credentials.server_url = "http://127.0.0.1:1".into();
    bad.max_retries = 1;
    let e = Client::new(bad).unwrap().login().await.unwrap_err();
    texts.push(format!("{e} {e:?}"));
    texts.push(format!("{c:?} {cfg:?} {:?}", c.stats()));
    c.logout().await.unwrap();

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("ringfs::api"), "the capture works: {logs}");
    assert!(logs.contains("refreshed"), "the flow renewed a token");
    assert!(secrets.len() >= 6, "{}", secrets.len());
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret is in the logs");
        for t in &texts {
            assert!(!t.contains(secret.as_str()), "a secret is in {t}");
        }
    }
}
