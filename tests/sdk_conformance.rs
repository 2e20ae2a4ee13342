//! Conformance with a client nobody here wrote: the official RingCentral Python SDK (PyPI
//! `ringcentral`) logs in, pages through the call log and downloads a recording, unchanged,
//! against the `ringfs-emulator` binary (`tests/sdk_conformance.py`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use ringfs::emulator::{Config, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_JWT, Emulator};
use serde_json::Value;

/// Kills the emulator process if the test fails half-way.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn official_python_sdk_logs_in_pages_and_downloads() {
    let probe = Command::new("python3")
        .args(["-c", "import ringcentral"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        _ => {
            panic!("the official RingCentral Python SDK is missing: run `pip install ringcentral`")
        }
    }

    let (seed, calls) = ("5", "60");
    let mut child = Guard(
        Command::new(env!("CARGO_BIN_EXE_ringfs-emulator"))
            .args(["--seed", seed, "--calls", calls])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ringfs-emulator starts"),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let api = lines.next().expect("API URL line").unwrap();
    let media = lines.next().expect("media URL line").unwrap();
    assert!(
        api.starts_with("http://127.0.0.1:")
            && media.starts_with("http://127.0.0.1:")
            && api != media
    );

    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("recording.bin");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk_conformance.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&out_file)
        .env("RC_SERVER_URL", &api)
        .env("RC_CLIENT_ID", DEMO_CLIENT_ID)
        .env("RC_CLIENT_SECRET", DEMO_CLIENT_SECRET)
        .env("RC_JWT", DEMO_JWT)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "SDK script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("summary JSON");

    // Ground truth from an in-process emulator with the same seed: same calls, same bytes.
    let truth = Emulator::start(Config {
        seed: seed.parse().unwrap(),
        calls: calls.parse().unwrap(),
        ..Config::default()
    })
    .await
    .unwrap();
    let expected_bytes = truth.recording_bytes("44444444").unwrap();
    let downloaded = std::fs::read(&out_file).unwrap();
    assert_eq!(downloaded.len(), expected_bytes.len());
    assert!(
        downloaded == expected_bytes,
        "downloaded recording differs from the emulator's bytes"
    );
    assert_eq!(summary["content_type"], "audio/mpeg");
    assert_eq!(summary["session"], "1234567890");

    let settled = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(3);
    let mine: Vec<_> = truth
        .calls()
        .into_iter()
        .filter(|c| c.extension_id == "22222222" && c.recording_id.is_some())
        .collect();
    let ids: Vec<&str> = summary["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for c in mine.iter().filter(|c| c.visible_at < settled) {
        assert!(
            ids.contains(&c.call_log_id.as_str()),
            "the SDK saw {}",
            c.call_log_id
        );
    }
    for id in &ids {
        assert!(
            mine.iter().any(|c| c.call_log_id == *id),
            "{id} is one of the user's recorded calls"
        );
    }
    let pages = summary["pages"].as_u64().unwrap();
    assert_eq!(
        pages,
        (ids.len() as u64).div_ceil(10).max(1),
        "paged 10 at a time"
    );
    assert!(pages >= 2, "more than one page was followed");

    // SIGTERM ends the emulator cleanly.
    let pid = child.0.id() as libc::pid_t;
    // SAFETY: signalling our own child process by its pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.0.wait().unwrap();
    assert!(status.success(), "emulator exit status: {status}");
    truth.shutdown().await;
}
