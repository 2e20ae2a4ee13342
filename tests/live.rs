//! Live events end to end: the emulator's WebSocket notifications, the client's subscription
//! (`source::live_feed`, as `--events auto` starts it), the core's reaction and a real FUSE
//! mount. Each test starts calls on demand (`Emulator::start_call`) and checks what the mount
//! shows and what it spent, from the emulator's own counters.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use jiff::Timestamp;
use ringfs::api::{EventsConfig, LiveNotice};
use ringfs::emulator::{Config, NewCall, Notifications};
use ringfs::fs::{Feed, ScopeChoice};

/// An emulator whose records show 1 s after a call ends and whose media 0.5 s after, with
/// quick telephony events; and a core that asks for an ended session 1.2 s after its end and
/// would re-list today every `recent_ttl` without events.
fn live_config() -> Config {
    let mut cfg = quick_config(6, 2);
    cfg.record_delay = Duration::from_secs(1);
    cfg.recording_delay = Duration::from_millis(500);
    cfg.notifications = Notifications::default()
        .event_delays(Duration::from_millis(100), Duration::from_millis(200));
    cfg
}

fn live_mount(cfg: Config, recent_ttl: Duration) -> Mounted {
    let m = mount(stack(cfg, |fc| {
        fc.recent_ttl = recent_ttl;
        fc.record_delay = Duration::from_millis(1200);
    }));
    m.stack.fs.set_changes(m.changes());
    let s = &m.stack;
    let _rt = s.rt.enter();
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    s.fs.clone().follow(rx);
    s.rt.spawn(ringfs::source::live_feed(
        s.client.clone(),
        ScopeChoice::Auto,
        EventsConfig::default(),
        tx,
        None,
    ));
    m
}

fn today() -> String {
    Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date()
        .to_string()
}

fn names(dir: &std::path::Path) -> BTreeSet<String> {
    names_in(dir).unwrap().into_iter().collect()
}

/// The directory of session `id` in `day`, once listed (`HH-MM-SS in ... <id>`).
fn session_dir(day: &std::path::Path, id: &str) -> Option<String> {
    let suffix = format!(" {id}");
    names(day).into_iter().find(|n| n.ends_with(&suffix))
}

/// Waits up to `secs` for session `id` to be listed in `day`; its directory name, or a panic
/// saying what the feed and the emulator had done.
fn listed_within(m: &Mounted, day: &std::path::Path, id: &str, secs: u64) -> String {
    eventually(Duration::from_secs(secs), || session_dir(day, id)).unwrap_or_else(|| {
        panic!(
            "session {id} was not listed in {}: {:?}, feed {:?}, {:?}",
            day.display(),
            m.stack.fs.live_counters(),
            m.stack.fs.feed(),
            m.emu().stats()
        )
    })
}

fn wait_feed(m: &Mounted, want: fn(&Feed) -> bool) -> Feed {
    eventually(Duration::from_secs(10), || {
        let f = m.stack.fs.feed();
        want(&f).then_some(f)
    })
    .unwrap_or_else(|| panic!("the feed is {:?}", m.stack.fs.feed()))
}

/// How long after `at` it is now.
fn since(at: Timestamp) -> Duration {
    Duration::try_from(Timestamp::now().duration_since(at)).unwrap_or_default()
}

#[test]
fn a_finished_call_is_listed_within_two_seconds_of_being_fetchable() {
    if !can_mount() {
        return;
    }
    // Without events, today would be listed again every 500 ms.
    let m = live_mount(live_config(), Duration::from_millis(500));
    wait_feed(&m, |f| *f == Feed::Live);
    let day = m.p(&today());
    let before = names(&day);
    let listed = m.emu().stats().call_log();

    let call = m.emu().start_call(NewCall::default());
    let ready = call.visible_at.max(call.fetchable_at);
    // An open file manager lists again and again: while events flow, that costs nothing.
    let appeared = listed_within(&m, &day, &call.session_id, 15);
    let late = since(ready);
    assert!(
        late < Duration::from_secs(2),
        "listed {late:?} after its recording became fetchable"
    );
    let after = names(&day);
    assert_eq!(
        after.difference(&before).cloned().collect::<Vec<_>>(),
        vec![appeared.clone()],
        "exactly the new session was added"
    );
    // Its recording reads whole.
    let dir = day.join(&appeared);
    let file = names(&dir)
        .into_iter()
        .find(|n| n.ends_with(".mp3") || n.ends_with(".wav"))
        .expect("a recording file");
    let id = call.recording_id.clone().unwrap();
    assert_eq!(
        std::fs::read(dir.join(&file)).unwrap(),
        m.emu().recording_bytes(&id).unwrap()
    );
    // For all that: one call-log request (the session's), and a media request or two (the
    // record shows before the media host has finished processing: the open waited through a
    // 404 and its one-second cool-down).
    let st = m.emu().stats();
    assert_eq!(
        st.call_log() - listed,
        1,
        "one call-log request for the new call"
    );
    assert!((1..=3).contains(&st.media_of(&id)), "{st:?}");
    assert_eq!(st.ws_subscriptions, 1);
}

#[test]
fn a_dropped_websocket_recovers_without_losing_an_event() {
    if !can_mount() {
        return;
    }
    let m = live_mount(live_config(), Duration::from_secs(3600));
    wait_feed(&m, |f| *f == Feed::Live);
    let day = m.p(&today());
    let _ = names(&day);
    let listed = m.emu().stats().call_log();
    // A 3 s call; the socket is cut while it goes on, so its Disconnected is sent while the
    // mount is away and must come back through recovery.
    let call = m.emu().start_call(NewCall {
        duration: Duration::from_secs(3),
        ..NewCall::default()
    });
    std::thread::sleep(Duration::from_millis(600));
    m.emu().drop_ws_connections();
    listed_within(&m, &day, &call.session_id, 20);
    let st = m.emu().stats();
    assert!(st.ws_recoveries >= 1, "the reconnect recovered: {st:?}");
    assert_eq!(st.ws_subscriptions, 1, "no new subscription was needed");
    // Found through the recovered event: one session query, no catch-up listing of today
    // (the recent TTL is an hour, so nothing else lists it).
    assert_eq!(st.call_log() - listed, 1, "{st:?}");
}

#[test]
fn a_refused_subscription_falls_back_to_listing() {
    if !can_mount() {
        return;
    }
    let mut cfg = live_config();
    cfg.notifications = cfg.notifications.refuse_subscription(Some("CallControl"));
    let m = live_mount(cfg, Duration::from_millis(500));
    let feed = wait_feed(&m, |f| matches!(f, Feed::Unavailable(_)));
    let Feed::Unavailable(why) = feed else {
        unreachable!()
    };
    assert!(
        why.contains("CallControl"),
        "the reason names the permission: {why}"
    );
    let day = m.p(&today());
    let _ = names(&day);
    let call = m.emu().start_call(NewCall::default());
    // Listing again finds the new call.
    listed_within(&m, &day, &call.session_id, 15);
    // Both the account's and the extension's subscriptions were tried.
    assert_eq!(m.emu().stats().endpoint("subscription-create"), 2);
}

#[test]
fn an_announced_recording_opens_once_it_is_ready_and_is_announced_once() {
    if !can_mount() {
        return;
    }
    let m = live_mount(live_config(), Duration::from_secs(3600));
    wait_feed(&m, |f| *f == Feed::Live);
    let mut readable = m.stack.fs.readable();
    let events_before = m.stack.fs.live_counters().events;
    let call = m.emu().start_call(NewCall {
        duration: Duration::from_secs(2),
        ..NewCall::default()
    });
    let id = call.recording_id.clone().unwrap();
    // A script that got the event naming the recording (Answered, 200 ms after the start)
    // opens the recording by its id at once, while the call goes on.
    eventually(Duration::from_secs(5), || {
        (m.stack.fs.live_counters().events >= events_before + 3).then_some(())
    })
    .expect("the Answered event arrived");
    let path: PathBuf = m.p(&format!("by-recording/{id}.mp3"));
    let t = Instant::now();
    let got = std::fs::read(&path).expect("the announced recording opens");
    assert_eq!(got, m.emu().recording_bytes(&id).unwrap());
    assert!(
        since(call.fetchable_at) < Duration::from_secs(3),
        "it waited for the recording, not longer ({:?} waited)",
        t.elapsed()
    );
    // The readable feed named it exactly once, even after a listing of its date.
    let _ = names(&m.p(&today()));
    std::thread::sleep(Duration::from_millis(300));
    let mut seen = Vec::new();
    while let Ok(r) = readable.try_recv() {
        seen.push(r.path);
    }
    let ours: Vec<_> = seen.iter().filter(|p| p.contains(&id)).collect();
    assert_eq!(ours.len(), 1, "announced once: {seen:?}");
    let st = m.emu().stats();
    assert!((1..=3).contains(&st.media_of(&id)), "{st:?}");
}

#[test]
fn the_feed_notices_reach_the_core_in_order() {
    // No mount needed: the feed alone, against the emulator, as `--events auto` runs it.
    let cfg = live_config();
    let s = stack(cfg, |_| {});
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let _rt = s.rt.enter();
    s.rt.spawn(ringfs::source::live_feed(
        s.client.clone(),
        ScopeChoice::Auto,
        EventsConfig::default(),
        tx,
        None,
    ));
    let first = s.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
    });
    assert_eq!(first, Some(LiveNotice::Live { gap: true }));
    let call = s.emu.start_call(NewCall::default());
    let statuses = s.rt.block_on(async {
        let mut statuses = Vec::new();
        while !statuses.iter().any(|s: &String| s == "Disconnected") {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(LiveNotice::Event(e))) if e.session_id == call.session_id.as_str() => {
                    statuses.extend(e.parties.iter().map(|p| p.status.clone()));
                }
                Ok(Some(_)) => {}
                other => panic!("feed ended: {other:?}"),
            }
        }
        statuses
    });
    assert_eq!(
        statuses,
        ["Setup", "Proceeding", "Answered", "Disconnected"],
        "the call's statuses"
    );
}

/// The real binary with `--events websocket` (it returns once the subscription is live): an
/// unmount deletes the subscription over the socket before the process ends, instead of leaving
/// it to expire on the service (RingCentral allows 30 per user and app).
#[test]
fn an_unmount_deletes_the_subscription() {
    if !can_mount() {
        return;
    }
    let cfg = live_config();
    let rt = runtime();
    let emu = rt
        .block_on(ringfs::emulator::Emulator::start(cfg.clone()))
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mp = MountPoint::temp("ringfs-bye-");
    let mnt = mp.0.path();
    run_ok(
        ringfs_binary(
            &emu,
            &cfg,
            mnt,
            &tmp.path().join("tokens.json"),
            &tmp.path().join("ringfs.log"),
        )
        .args(["--events", "websocket"]),
    );
    assert!(is_mounted(mnt));
    let count = |what: &str| emu.stats().by_endpoint.get(what).copied().unwrap_or(0);
    assert_eq!(count("subscription-create"), 1);
    assert_eq!(count("subscription-delete"), 0);
    run_ok(std::process::Command::new("fusermount3").arg("-u").arg(mnt));
    let deleted = eventually(Duration::from_secs(5), || {
        (count("subscription-delete") > 0).then_some(())
    });
    let log = std::fs::read_to_string(tmp.path().join("ringfs.log")).unwrap_or_default();
    assert!(
        deleted.is_some(),
        "no DELETE of the subscription after the unmount; the log ends:\n{}",
        log
    );
    assert_eq!(count("subscription-delete"), 1);
}
