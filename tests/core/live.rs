//! The core's reaction to the live event feed (`ringfs::fs`'s `live`): events driven straight
//! into [`Fs::on_notice`] / [`Fs::follow`], under paused tokio time, every call-log query
//! counted.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use ringfs::fs::{Changes, FETCH_TRIES, Feed, FsConfig, Readable};
use ringfs::model::{LiveNotice, SessionEvent};
use serde_json::json;
use tokio::sync::broadcast::error::TryRecvError;

use super::faulty::Outcome;
use super::scripted::{Call, QueryKind, ScriptedLog};
use super::{Core, at, background, core, errno, names, today};

/// What the core told the kernel.
#[derive(Default)]
struct Seen(Mutex<Vec<(u64, Option<String>)>>);

impl Changes for Seen {
    fn dir_changed(&self, ino: u64) {
        self.0.lock().unwrap().push((ino, None));
    }
    fn entry_added(&self, parent: u64, name: &OsStr) {
        self.0
            .lock()
            .unwrap()
            .push((parent, Some(name.to_string_lossy().into_owned())));
    }
}

/// A telephony session event with one party in `status` (and `reason`), naming `recording`.
fn event(
    session: &str,
    seq: u64,
    status: &str,
    reason: Option<&str>,
    recording: Option<&str>,
) -> LiveNotice {
    let mut party = json!({"id": "p-1", "direction": "Inbound", "status": {"code": status}});
    if let Some(r) = reason {
        party["status"]["reason"] = json!(r);
    }
    if let Some(rec) = recording {
        party["recordings"] = json!([{"id": rec, "active": status != "Disconnected"}]);
    }
    let ev = json!({"uuid": format!("u-{seq}"), "event": "/restapi/v1.0/account/~/telephony/sessions",
        "body": {"sessionId": session, "sequence": seq, "telephonySessionId": format!("s-{session}"),
                 "parties": [party]}});
    LiveNotice::Event(SessionEvent::from_json(&ev).unwrap())
}

/// A call on today's date that started a few minutes ago (or just after midnight).
fn call_now(session: &str, recording: &str) -> Call {
    let start = (Timestamp::now() - SignedDuration::from_secs(300)).max(at(today(), "00:01:00"));
    Call::new(session, start, recording)
}

fn finds(c: &Core) -> usize {
    c.log
        .queries()
        .iter()
        .filter(|q| q.kind == QueryKind::FindSession)
        .count()
}

fn live_core(tune: impl FnOnce(&mut FsConfig)) -> (Core, Arc<Seen>) {
    let mut calls = background(today());
    calls.push(call_now("7100000001", "71000001"));
    let c = core(ScriptedLog::new(&calls), tune);
    let seen = Arc::new(Seen::default());
    c.fs.set_changes(seen.clone());
    (c, seen)
}

/// Lets spawned tasks run (paused time: sleeping advances the clock when all are idle).
async fn pass(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

fn readables(rx: &mut tokio::sync::broadcast::Receiver<Readable>) -> Vec<Readable> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(r) => out.push(r),
            Err(TryRecvError::Empty) => return out,
            Err(e) => panic!("readable feed: {e}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_ended_session_is_fetched_once_after_the_record_delay_and_shows_in_its_date() {
    let (c, seen) = live_core(|_| {});
    let day = today().to_string();
    let first = c.list(&day).await.unwrap();
    assert_eq!(first.len(), 1);
    let mut rx = c.fs.readable();
    let call = call_now("7100000002", "71000002");
    c.log.add(&call);
    c.fs.on_notice(LiveNotice::Live { gap: false });
    c.fs.on_notice(event(&call.session, 1, "Answered", None, Some("71000002")));
    c.fs.on_notice(event(
        &call.session,
        2,
        "Disconnected",
        None,
        Some("71000002"),
    ));
    pass(1).await;
    assert_eq!(
        finds(&c),
        0,
        "nothing before record_delay (2 s, the first guess)"
    );
    pass(2).await;
    assert_eq!(finds(&c), 1, "one find_session: {:?}", c.log.queries());
    pass(600).await;
    assert_eq!(finds(&c), 1, "the record was there: no retry");
    let pages = c.pages();
    let listed = c.list(&day).await.unwrap();
    assert_eq!(listed.len(), 2, "{:?}", names(&listed));
    assert_eq!(c.pages(), pages, "the live feed's record, not a listing");
    let dir = listed
        .iter()
        .find(|e| e.name.ends_with(&call.session))
        .expect("the ended session's directory");
    let date_ino = c.lookup(&day).await.unwrap().ino;
    let told = seen.0.lock().unwrap().clone();
    assert!(told.contains(&(date_ino, None)), "{told:?}");
    assert!(
        told.contains(&(date_ino, Some(dir.name.clone()))),
        "{told:?}"
    );
    let got = readables(&mut rx);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].path.starts_with(&format!("{day}/{}/", dir.name)));
    assert_eq!(got[0].record["sessionId"], call.session.as_str());
    c.lookup(&got[0].path).await.expect("the announced path");
    let counters = c.fs.live_counters();
    assert_eq!((counters.fetches, counters.found), (1, 1));
    println!("[core] ended session: {} find_session, 0 pages", finds(&c));
}

#[tokio::test(start_paused = true)]
async fn a_record_that_shows_late_is_asked_for_again_with_backoff_and_given_up_in_bounds() {
    let (c, _) = live_core(|_| {});
    let late = call_now("7100000003", "71000003");
    c.fs.on_notice(LiveNotice::Live { gap: false });
    c.fs.on_notice(event(
        &late.session,
        5,
        "Disconnected",
        None,
        Some("71000003"),
    ));
    pass(3).await;
    assert_eq!(finds(&c), 1, "the first guess: 2 s");
    pass(1).await;
    assert_eq!(finds(&c), 1, "a miss: again 2 s later, not sooner");
    pass(1).await;
    assert_eq!(finds(&c), 2);
    c.log.add(&late);
    pass(2).await;
    assert_eq!(finds(&c), 3, "{:?}", c.log.queries());
    pass(1000).await;
    assert_eq!(finds(&c), 3, "found: no more");
    assert!(c.fs.live_counters().found == 1);

    // A record that never shows: FETCH_TRIES requests, then the safety re-list's job.
    c.fs.on_notice(event(
        "7100000004",
        2,
        "Disconnected",
        None,
        Some("71000004"),
    ));
    pass(3600).await;
    assert_eq!(finds(&c), 3 + FETCH_TRIES as usize);
    assert_eq!(c.fs.live_counters().gave_up, 1);
    let r = c.lookup("by-recording/71000004.mp3").await;
    assert_eq!(
        errno(&r),
        Some(libc::ENOENT),
        "given up: looked up as an unknown id"
    );
}

/// The first request for an ended session goes when the last session's record was found, less
/// a second: a service whose records take 20 s costs its first call a few misses, and then one
/// or two requests a call, each record found within about 2 s of showing.
#[tokio::test(start_paused = true)]
async fn the_first_request_follows_how_long_records_took_last_time() {
    let (c, _) = live_core(|_| {});
    c.fs.on_notice(LiveNotice::Live { gap: false });
    let mut spent = Vec::new();
    for n in 0..5u64 {
        let call = call_now(&format!("75000000{n:02}"), &format!("750000{n:02}"));
        let before = finds(&c);
        let rec = format!("750000{n:02}");
        c.fs.on_notice(event(&call.session, 9, "Disconnected", None, Some(&rec)));
        // The record shows 20 s after the end.
        pass(20).await;
        c.log.add(&call);
        let mut waited = 20;
        while c.fs.live_counters().found <= n {
            pass(1).await;
            waited += 1;
            assert!(waited < 200, "never found: {:?}", c.fs.live_counters());
        }
        assert!(waited <= 22, "call {n}: found {waited} s after the end");
        spent.push(finds(&c) - before);
    }
    println!(
        "[core] find_session requests per call, records showing 20 s after the end: {spent:?}"
    );
    assert!(spent[0] <= 7, "{spent:?}");
    assert!(spent[1..].iter().all(|&n| n <= 2), "{spent:?}");
    // The waits between requests: 2 s three times, then doubling to 2 min.
    let waits: Vec<u64> = ringfs::fs::fetch_waits().map(|d| d.as_secs()).collect();
    assert_eq!(waits, [2, 2, 2, 4, 8, 16, 32, 64]);
}

#[tokio::test(start_paused = true)]
async fn while_live_recent_dates_are_not_listed_again_until_the_safety_relist_and_after_down_they_are()
 {
    let (c, _) = live_core(|_| {});
    let day = today().to_string();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let follow = c.fs.clone().follow(rx);
    tx.send(LiveNotice::Live { gap: false }).await.unwrap();
    c.list(&day).await.unwrap();
    assert_eq!(c.pages(), 1);
    pass(10).await;
    c.list(&day).await.unwrap();
    pass(300).await; // ten times recent_ttl
    c.list(&day).await.unwrap();
    assert_eq!(c.pages(), 1, "live: no re-list on recent_ttl");
    assert_eq!(c.fs.feed(), Feed::Live);
    // The safety re-list, 15 min after the listing.
    pass(15 * 60).await;
    assert_eq!(c.pages(), 2, "{:?}", c.log.pages());
    c.list(&day).await.unwrap();
    assert_eq!(c.pages(), 2);

    tx.send(LiveNotice::Down).await.unwrap();
    pass(31).await;
    c.list(&day).await.unwrap();
    assert_eq!(c.pages(), 3, "down: recent_ttl again");
    c.list(&day).await.unwrap();
    assert_eq!(c.pages(), 3);
    pass(31).await;
    c.list(&day).await.unwrap();
    assert_eq!(c.pages(), 4);

    tx.send(LiveNotice::Unavailable("no CallControl".into()))
        .await
        .unwrap();
    pass(31).await;
    c.list(&day).await.unwrap();
    assert_eq!(c.pages(), 5, "unavailable: as without events");
    // The feed ends after saying events are unavailable; the reason stays for `status`.
    drop(tx);
    follow.await.unwrap();
    assert_eq!(c.fs.feed(), Feed::Unavailable("no CallControl".into()));
}

#[tokio::test(start_paused = true)]
async fn a_gap_lists_the_recent_dates_already_listed_once() {
    let (c, _) = live_core(|_| {});
    c.fs.on_notice(LiveNotice::Live { gap: true });
    pass(5).await;
    assert_eq!(c.pages(), 0, "no date listed yet: nothing to catch up");
    let day = today().to_string();
    c.list(&day).await.unwrap();
    assert_eq!(c.pages(), 1);
    let missed = call_now("7100000005", "71000005");
    c.log.add(&missed);
    c.fs.on_notice(LiveNotice::Down);
    c.fs.on_notice(LiveNotice::Live { gap: true });
    pass(5).await;
    assert_eq!(c.pages(), 2, "one catch-up: {:?}", c.log.pages());
    let listed = c.list(&day).await.unwrap();
    assert_eq!(c.pages(), 2);
    assert!(
        names(&listed).iter().any(|n| n.ends_with(&missed.session)),
        "what the gap hid shows"
    );
}

#[tokio::test(start_paused = true)]
async fn an_announced_id_waits_for_its_record_and_an_unknown_one_fails_at_once() {
    let (c, _) = live_core(|_| {});
    let c = Arc::new(c);
    let call = call_now("7100000006", "71000006");
    c.fs.on_notice(event(&call.session, 1, "Answered", None, Some("71000006")));
    let waiting = {
        let c = c.clone();
        tokio::spawn(async move { c.lookup("by-recording/71000006.mp3").await })
    };
    let by_session = {
        let c = c.clone();
        let path = format!("by-session/{}", call.session);
        tokio::spawn(async move { c.lookup(&path).await })
    };
    pass(60).await;
    assert!(!waiting.is_finished(), "the call is still going on");
    c.fs.on_notice(event(
        &call.session,
        2,
        "Disconnected",
        None,
        Some("71000006"),
    ));
    c.log.add(&call);
    pass(21).await;
    assert!(waiting.is_finished() && by_session.is_finished());
    waiting.await.unwrap().expect("listed by the event's fetch");
    by_session
        .await
        .unwrap()
        .expect("listed by the event's fetch");
    let queries = c.log.queries();
    assert_eq!(
        queries.len(),
        1,
        "one find_session, nothing else: {queries:?}"
    );
    assert!(c.media.opens().is_empty(), "no media request to resolve it");

    let t = tokio::time::Instant::now();
    let r = c.lookup("by-recording/71999999.mp3").await;
    assert_eq!(errno(&r), Some(libc::ENOENT));
    assert_eq!(t.elapsed(), Duration::ZERO, "an unknown id does not wait");
    // An ended call without a recording: nothing is coming, so no wait either.
    c.fs.on_notice(event("7100000010", 1, "Disconnected", None, None));
    let r = c.lookup("by-session/7100000010").await;
    assert_eq!(errno(&r), Some(libc::ENOENT));
    assert_eq!(t.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn each_new_recording_is_announced_readable_once() {
    let (c, _) = live_core(|_| {});
    let day = today().to_string();
    let mut rx = c.fs.readable();
    c.list(&day).await.unwrap();
    assert!(readables(&mut rx).is_empty(), "a first listing is history");
    let call = call_now("7100000007", "71000007");
    c.log.add(&call);
    c.fs.on_notice(LiveNotice::Live { gap: false });
    // Out of order, and twice.
    for seq in [3, 2, 3, 1] {
        let status = if seq == 3 { "Disconnected" } else { "Answered" };
        c.fs.on_notice(event(&call.session, seq, status, None, Some("71000007")));
    }
    pass(30).await;
    assert_eq!(finds(&c), 1, "duplicates start no second fetch");
    let got = readables(&mut rx);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].path.ends_with("71000007.mp3"), "{}", got[0].path);

    // One the events missed, found by a polling re-list; the first is not announced again.
    let missed = call_now("7100000008", "71000008");
    c.log.add(&missed);
    c.fs.on_notice(LiveNotice::Down);
    pass(31).await;
    c.list(&day).await.unwrap();
    let got = readables(&mut rx);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].path.ends_with("71000008.mp3"), "{}", got[0].path);
    pass(31).await;
    c.list(&day).await.unwrap();
    assert!(readables(&mut rx).is_empty());
    assert_eq!(c.fs.live_counters().readable, 2);
}

#[tokio::test(start_paused = true)]
async fn a_blind_transfer_is_not_the_end() {
    let (c, _) = live_core(|_| {});
    c.fs.on_notice(event(
        "7100000009",
        4,
        "Disconnected",
        Some("BlindTransfer"),
        Some("71000009"),
    ));
    pass(600).await;
    assert_eq!(finds(&c), 0, "{:?}", c.log.queries());
}

/// One simulated hour of a line with `calls` recorded calls ending at even intervals, while a
/// file manager keeps today's directory open (listing it every 5 s): the call-log requests it
/// costs with events (`live`) and without (listing again every `recent_ttl`, 30 s).
async fn an_hour(calls: u64, live: bool) -> (usize, usize) {
    let (c, _) = live_core(|_| {});
    let day = today().to_string();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let _follow = live.then(|| c.fs.clone().follow(rx));
    if live {
        tx.send(LiveNotice::Live { gap: true }).await.unwrap();
    }
    c.list(&day).await.unwrap();
    let every = 3600 / calls;
    let mut made = 0;
    for t in (0..3600).step_by(5) {
        if t / every >= made && made < calls {
            let session = format!("72{made:08}");
            let recording = format!("73{made:06}");
            c.log.add(&call_now(&session, &recording));
            if live {
                for (seq, status) in [(1, "Answered"), (2, "Disconnected")] {
                    tx.send(event(&session, seq, status, None, Some(&recording)))
                        .await
                        .unwrap();
                }
            }
            made += 1;
        }
        c.list(&day).await.unwrap();
        pass(5).await;
    }
    pass(300).await; // the last call's record
    let shown = c.list(&day).await.unwrap().len();
    (c.pages() + finds(&c), shown)
}

#[tokio::test(start_paused = true)]
async fn an_hour_with_events_costs_about_one_request_per_finished_call() {
    for calls in [10, 120] {
        let (with, shown_with) = an_hour(calls, true).await;
        let (without, shown_without) = an_hour(calls, false).await;
        println!(
            "[budget] one hour, {calls} finished recorded calls, today's directory open: \
             {with} call-log requests with events, {without} listing every 30 s"
        );
        // Every call shows either way (the first background call plus the hour's).
        assert_eq!(shown_with, 1 + calls as usize);
        assert_eq!(shown_without, 1 + calls as usize);
        // With events: the first listing, one query per call, and the safety re-lists (every
        // 15 minutes).
        assert!(
            with <= 1 + calls as usize + 5,
            "{with} requests with events for {calls} calls"
        );
        assert!(without >= 120, "{without} requests without events");
    }
}

/// Before the mount knows how long records take, one ended session at a time probes for its
/// record; the others wait for what it learns: five calls ending together cost the probe's
/// misses once, not five times.
#[tokio::test(start_paused = true)]
async fn sessions_ending_together_learn_the_delay_from_one_probe() {
    let (c, _) = live_core(|_| {});
    c.fs.on_notice(LiveNotice::Live { gap: false });
    let calls: Vec<Call> = (0..5u64)
        .map(|n| call_now(&format!("76000000{n:02}"), &format!("760000{n:02}")))
        .collect();
    for (n, call) in calls.iter().enumerate() {
        let rec = format!("760000{n:02}");
        c.fs.on_notice(event(&call.session, 9, "Disconnected", None, Some(&rec)));
    }
    pass(19).await;
    let probes = finds(&c);
    assert!(probes <= 5, "{probes} requests before any record showed");
    // The records show 20 s after the end.
    for call in &calls {
        c.log.add(call);
    }
    pass(30).await;
    assert_eq!(c.fs.live_counters().found, 5, "{:?}", c.fs.live_counters());
    let total = finds(&c);
    assert!(
        total <= probes + 1 + 4,
        "{total} requests in all ({probes} probes)"
    );
    println!("[core] five calls ending together: {probes} probes, {total} requests in all");
}

#[tokio::test(start_paused = true)]
async fn a_safety_relist_never_makes_a_reader_wait() {
    // The re-list's page hangs; a reader of the date it lists again gets what was listed
    // before, at once, and the new listing once the page is in.
    let (c, _) = live_core(|fc| fc.read_timeout = Duration::from_secs(3600));
    let day = today().to_string();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let _follow = c.fs.clone().follow(rx);
    tx.send(LiveNotice::Live { gap: false }).await.unwrap();
    let before = names(&c.list(&day).await.unwrap());
    assert_eq!(c.pages(), 1);
    let later = call_now("7100000009", "71000009");
    c.log.add(&later);
    c.faults
        .always(|q| q.kind == QueryKind::Page, Outcome::Hang);
    pass(15 * 60 + 1).await;
    let hung = c.calls();
    let t = tokio::time::Instant::now();
    let during = names(&c.list(&day).await.unwrap());
    assert_eq!(
        t.elapsed(),
        Duration::ZERO,
        "the reader waited for the re-list"
    );
    assert_eq!(during, before);
    assert_eq!(c.calls(), hung, "the reader sent no request of its own");
    assert!(
        c.faults.seen().iter().any(|(_, o)| *o == Outcome::Hang),
        "the re-list is under way"
    );
    c.faults.clear_rules();
    c.faults.release();
    pass(1).await;
    let after = names(&c.list(&day).await.unwrap());
    assert!(
        after.iter().any(|n| n.ends_with(&later.session)),
        "the re-list's news: {after:?}"
    );
    assert_eq!(c.pages(), 2);
}
