//! The client over real HTTP framings the emulator's server cannot produce: bodies delimited
//! by the connection (no `Content-Length`, not chunked, as HTTP/1.0 servers send), whose clean end
//! looks exactly like a drop. A tiny hand-written server answers each request from a script.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringfs::api::{BodyEnd, Client, ClientConfig, Credentials, Priority};
use ringfs::media::{Media, MediaConfig, RecordingKey};

/// What the server does with one request: the status line and headers (without the blank line),
/// the body bytes, and whether it closes before sending them all (after `cut` bytes).
#[derive(Clone)]
struct Answer {
    head: String,
    body: Vec<u8>,
    cut: Option<usize>,
}

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A server on loopback answering `POST /restapi/oauth/token` with a token and every other
/// request with the next answer `script` gives for (request number, Range start).
struct Server {
    base: String,
    requests: Arc<AtomicUsize>,
    ranges: Arc<Mutex<Vec<Option<u64>>>>,
    /// The head of every scripted request (lower-cased).
    heads: Arc<Mutex<Vec<String>>>,
}

fn serve(script: impl Fn(usize, Option<u64>) -> Answer + Send + Sync + 'static) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (r2, g2, h2) = (requests.clone(), ranges.clone(), heads.clone());
    let script = Arc::new(script);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            let (requests, ranges, heads, script) =
                (r2.clone(), g2.clone(), h2.clone(), script.clone());
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut byte = [0u8; 1];
                while !buf.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    buf.push(byte[0]);
                }
                let req = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                if req.starts_with("post /restapi/oauth/token") {
                    // Drain the small form body, then answer with a token.
                    let len: usize = req
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    let _ = conn.read_exact(&mut body);
                    let json = r#"{"access_token":"tok","token_type":"bearer","expires_in":3600}"#;
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                        json.len()
                    );
                    return;
                }
                let range = req
                    .lines()
                    .find_map(|l| l.strip_prefix("range: bytes="))
                    .and_then(|v| v.trim().trim_end_matches('-').parse::<u64>().ok());
                let n = requests.fetch_add(1, Ordering::SeqCst);
                ranges.lock().unwrap().push(range);
                heads.lock().unwrap().push(req.clone());
                let a = script(n, range);
                let _ = write!(conn, "{}\r\nconnection: close\r\n\r\n", a.head);
                let upto = a.cut.unwrap_or(a.body.len()).min(a.body.len());
                let _ = conn.write_all(&a.body[..upto]);
                let _ = conn.flush();
                std::thread::sleep(Duration::from_millis(20));
                // Dropping the connection ends the body: cleanly or not, the client cannot tell.
            });
        }
    });
    Server {
        base,
        requests,
        ranges,
        heads,
    }
}

/// A client of the server at `base` (any credentials: the hand-made servers take them all).
fn config(base: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new(Credentials {
        server_url: base.into(),
        client_id: "a".into(),
        client_secret: "b".into(),
        jwt: "c".into(),
    });
    cfg.stall_timeout = Duration::from_secs(5);
    cfg
}

fn client(base: &str) -> Client {
    Client::new(config(base)).unwrap()
}

fn media(c: &Client) -> Arc<Media> {
    Media::new(
        Arc::new(ringfs::source::ApiMedia::new(c.clone())),
        MediaConfig {
            read_timeout: Duration::from_secs(10),
            ..MediaConfig::default()
        },
    )
}

async fn read_all(m: &Media, k: &RecordingKey) -> Vec<u8> {
    m.open(k, Priority::Interactive).await.unwrap();
    let mut out = Vec::new();
    loop {
        let b = m
            .read(k, out.len() as u64, 128 << 10, Priority::Interactive)
            .await
            .unwrap();
        if b.is_empty() {
            break;
        }
        out.extend_from_slice(&b);
    }
    m.close(k);
    out
}

/// A 200 delimited by its connection, from `from` (Range ignored) or a 206 from the range start.
fn close_delimited(
    body: &[u8],
    range: Option<u64>,
    honour_range: bool,
    cut: Option<usize>,
) -> Answer {
    match range.filter(|_| honour_range) {
        Some(a) if a as usize >= body.len() => Answer {
            head: format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */{}\r\ncontent-length: 0",
                body.len()
            ),
            body: Vec::new(),
            cut: None,
        },
        Some(a) => Answer {
            // A 206 whose total is unknown, delimited by the connection.
            head: format!(
                "HTTP/1.1 206 Partial Content\r\ncontent-type: audio/mpeg\r\ncontent-range: bytes {a}-{}/*",
                body.len() - 1
            ),
            body: body[a as usize..].to_vec(),
            cut,
        },
        None => Answer {
            head: "HTTP/1.1 200 OK\r\ncontent-type: audio/mpeg".into(),
            body: body.to_vec(),
            cut,
        },
    }
}

#[tokio::test]
async fn a_body_delimited_by_its_connection_is_an_unconfirmed_end() {
    let truth = content(300_000);
    let t = truth.clone();
    let s = serve(move |_, range| close_delimited(&t, range, false, None));
    let c = client(&s.base);
    let mut stream = c
        .open_media(&format!("{}/media/x", s.base), 0, Priority::Interactive)
        .await
        .unwrap();
    assert_eq!(
        (stream.total_len(), stream.end()),
        (None, BodyEnd::Unconfirmed)
    );
    let mut got = Vec::new();
    while let Some(b) = stream.next_chunk().await.unwrap() {
        got.extend_from_slice(&b);
    }
    assert!(got == truth);
    assert_eq!(
        stream.total_len(),
        None,
        "an end that a drop looks like too tells no length"
    );
}

#[tokio::test]
async fn a_whole_close_delimited_body_is_confirmed_by_one_more_request() {
    for honour_range in [false, true] {
        let truth = content(300_000);
        let t = truth.clone();
        let s = serve(move |_, range| close_delimited(&t, range, honour_range, None));
        let c = client(&s.base);
        let m = media(&c);
        let k = RecordingKey {
            id: "x".into(),
            content_uri: format!("{}/media/x", s.base),
        };
        let got = read_all(&m, &k).await;
        assert!(got == truth, "Range honoured: {honour_range}");
        assert_eq!(m.known("x").and_then(|k| k.size), Some(truth.len() as u64));
        // The whole body, then one request at its end that confirms it (416, or a 200 that ends
        // at the same byte).
        assert_eq!(
            s.requests.load(Ordering::SeqCst),
            2,
            "Range honoured: {honour_range}"
        );
        assert_eq!(s.ranges.lock().unwrap()[1], Some(truth.len() as u64));
    }
}

#[tokio::test]
async fn a_drop_in_a_close_delimited_body_is_never_taken_for_the_end() {
    for honour_range in [false, true] {
        let truth = content(500_000);
        let t = truth.clone();
        // The first answer breaks off after 123 457 bytes; that looks like a clean end.
        let s = serve(move |n, range| {
            close_delimited(&t, range, honour_range, (n == 0).then_some(123_457))
        });
        let c = client(&s.base);
        let m = media(&c);
        let k = RecordingKey {
            id: "x".into(),
            content_uri: format!("{}/media/x", s.base),
        };
        let got = read_all(&m, &k).await;
        assert_eq!(got.len(), truth.len(), "Range honoured: {honour_range}");
        assert!(got == truth);
        assert_eq!(m.known("x").and_then(|k| k.size), Some(truth.len() as u64));
        // Cut, resumed from the cut (which went on: it was a drop), then the end confirmed.
        assert_eq!(
            s.requests.load(Ordering::SeqCst),
            3,
            "Range honoured: {honour_range}"
        );
        assert_eq!(s.ranges.lock().unwrap()[1], Some(123_457));
    }
}

#[tokio::test]
async fn a_chunked_body_without_a_length_ends_at_its_last_chunk() {
    let truth = content(200_000);
    let t = truth.clone();
    let s = serve(move |_, _| {
        // Chunked framing by hand: one chunk, then the terminating one.
        let mut body = format!("{:x}\r\n", t.len()).into_bytes();
        body.extend_from_slice(&t);
        body.extend_from_slice(b"\r\n0\r\n\r\n");
        Answer {
            head: "HTTP/1.1 200 OK\r\ncontent-type: audio/x-wav\r\ntransfer-encoding: chunked"
                .into(),
            body,
            cut: None,
        }
    });
    let c = client(&s.base);
    let m = media(&c);
    let k = RecordingKey {
        id: "x".into(),
        content_uri: format!("{}/media/x", s.base),
    };
    assert!(read_all(&m, &k).await == truth);
    assert_eq!(m.known("x").and_then(|k| k.size), Some(truth.len() as u64));
    assert_eq!(
        m.known("x").and_then(|k| k.content_type),
        Some("audio/x-wav".into())
    );
    assert_eq!(
        s.requests.load(Ordering::SeqCst),
        1,
        "the last chunk is a sure end: no request to confirm it"
    );
}

#[tokio::test]
async fn a_json_body_cut_short_is_resent_within_the_requests_one_retry_budget() {
    // Three 503s, then a 200 that announces 100 bytes of JSON and breaks off after 10 (a body
    // that fails after a good status), over and over. The resends of the body and the retries
    // of the request share one bound: each apart, they would multiply.
    let s = serve(|n, _| {
        match n % 4 {
        3 => Answer {
            head: "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100".into(),
            body: br#"{"id":"1","contentUri":"http://x/1"}"#.repeat(3),
            cut: Some(10),
        },
        _ => Answer {
            head: "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 2".into(),
            body: b"{}".to_vec(),
            cut: None,
        },
    }
    });
    let mut cfg = config(&s.base);
    cfg.max_retries = 4;
    cfg.backoff_base = Duration::from_millis(5);
    cfg.backoff_max = Duration::from_millis(20);
    let c = Client::new(cfg).unwrap();
    let e = c
        .recording_meta("1", Priority::Interactive)
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(
        s.requests.load(Ordering::SeqCst),
        5,
        "max_retries + 1 sends in all"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_reported_with_each_cause_once() {
    let mut cfg = config("http://127.0.0.1:1");
    cfg.max_retries = 0;
    let e = Client::new(cfg).unwrap().login().await.unwrap_err();
    // As the core logs it, and as the binary prints it (anyhow's chain).
    let logged = ringfs::api::chain(&e);
    for text in [logged, format!("{:#}", anyhow::Error::new(e))] {
        assert_eq!(text.matches("error sending request").count(), 1, "{text}");
        assert!(text.contains("127.0.0.1:1"), "{text}");
    }
}

#[tokio::test]
async fn a_close_delimited_answer_that_ends_before_the_offset_confirms_nothing() {
    // Range ignored, bodies delimited by the connection. The first answer breaks off at 123 457
    // (which looks like an end); the next two break off at 5 000, before the offset asked for:
    // had they been taken for ends "at the offset", the first cut would have been confirmed as
    // the recording's length.
    let truth = content(400_000);
    let t = truth.clone();
    let s = serve(move |n, range| {
        let cut = match n {
            0 => Some(123_457),
            1 | 2 => Some(5_000),
            _ => None,
        };
        close_delimited(&t, range, false, cut)
    });
    let c = client(&s.base);
    let m = media(&c);
    let k = RecordingKey {
        id: "x".into(),
        content_uri: format!("{}/media/x", s.base),
    };
    let got = read_all(&m, &k).await;
    assert_eq!(got.len(), truth.len());
    assert!(got == truth);
    assert_eq!(m.known("x").and_then(|k| k.size), Some(truth.len() as u64));
    // The cut, two answers that brought nothing (strikes), the rest, the confirming one.
    assert_eq!(s.requests.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_read_past_the_end_of_a_close_delimited_recording_is_empty() {
    // Range ignored, no length, delimited by the connection: a read past the end gets the whole
    // (shorter) body each time. Two answers that close at the same byte say where it ends.
    let truth = content(45_275);
    let t = truth.clone();
    let s = serve(move |_, range| close_delimited(&t, range, false, None));
    let m = media(&client(&s.base));
    let k = RecordingKey {
        id: "x".into(),
        content_uri: format!("{}/media/x", s.base),
    };
    let got = m
        .read(&k, 62_460, 131_072, Priority::Interactive)
        .await
        .unwrap();
    assert!(got.is_empty(), "{} bytes past the end", got.len());
    assert_eq!(m.known("x").and_then(|k| k.size), Some(truth.len() as u64));
    assert_eq!(s.requests.load(Ordering::SeqCst), 2);
    // And the recording itself reads whole, from what is known.
    assert!(read_all(&m, &k).await == truth);
}

/// A media host that redirects every content request to another origin (a CDN with a signed
/// URL, say) which honours `Range` and states its lengths: the bytes come from there, the
/// Range header goes along, and the bearer token does not leave the media host.
#[tokio::test]
async fn a_redirect_to_another_host_is_followed_without_the_token() {
    let truth = content(6_000_000);
    let t = truth.clone();
    let cdn = serve(move |_, range| {
        let a = range.unwrap_or(0) as usize;
        let status = if range.is_some() {
            format!(
                "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {a}-{}/{}",
                t.len() - 1,
                t.len()
            )
        } else {
            "HTTP/1.1 200 OK".to_string()
        };
        Answer {
            head: format!(
                "{status}\r\ncontent-type: audio/mpeg\r\ncontent-length: {}",
                t.len() - a
            ),
            body: t[a..].to_vec(),
            cut: None,
        }
    });
    let to = cdn.base.replace("127.0.0.1", "localhost");
    let host = serve(move |n, _| Answer {
        head: format!("HTTP/1.1 302 Found\r\nlocation: {to}/signed/x?sig={n}\r\ncontent-length: 0"),
        body: Vec::new(),
        cut: None,
    });
    let c = client(&host.base);
    let m = media(&c);
    let k = RecordingKey {
        id: "x".into(),
        content_uri: format!("{}/media/x", host.base),
    };
    // A read far into the file first (a Range request), then the whole file.
    m.open(&k, Priority::Interactive).await.unwrap();
    let mid = m
        .read(&k, 5_000_000, 4096, Priority::Interactive)
        .await
        .unwrap();
    assert!(mid[..] == truth[5_000_000..5_004_096]);
    m.close(&k);
    let got = read_all(&m, &k).await;
    assert!(got == truth, "{} bytes of {}", got.len(), truth.len());
    assert_eq!(m.known("x").and_then(|k| k.size), Some(truth.len() as u64));
    let host_heads = host.heads.lock().unwrap().clone();
    let cdn_heads = cdn.heads.lock().unwrap().clone();
    assert!(!host_heads.is_empty() && host_heads.len() == cdn_heads.len());
    assert!(
        host_heads
            .iter()
            .all(|h| h.contains("authorization: bearer"))
    );
    assert!(
        cdn_heads.iter().all(|h| !h.contains("authorization")),
        "the token went to another host: {cdn_heads:?}"
    );
    assert!(host.ranges.lock().unwrap().iter().any(|r| r.is_some()));
    assert!(
        *cdn.ranges.lock().unwrap() == *host.ranges.lock().unwrap(),
        "the Range header followed the redirect: {:?} {:?}",
        host.ranges.lock().unwrap(),
        cdn.ranges.lock().unwrap()
    );
}
