//! Per-recording media quirks: the freedoms the real media host has and does not document.
//!
//! The contract leaves open whether a content response carries `Content-Length`, whether `Range`
//! is honoured and how, how a range past the end is refused, and which WAV content type is sent;
//! a download may also break off, be slow, or be refused for a while (5xx, or 404 `CMN-102`
//! while the recording is still processed). A client that is correct survives every one of these,
//! in any combination, for each recording on its own. So the emulator sets them per recording
//! ([`MediaQuirks`]): explicitly, drawn from a seed ([`MediaQuirks::draw`]) so that one account
//! mixes them the way a real one may, or from the account-wide flags of [`MediaBehaviour`].
//!
//! `Range` headers are parsed here too ([`parse_range`]): the quirks decide how they are answered,
//! and the plain file directory of the media host answers them as any HTTP server would.
//!
//! [`PerRecording`] holds what changes while serving: quirks set at runtime, how many requests
//! each recording has seen (for `not_found_first` and `errors_first`) and which drop offsets have
//! fired. Its locks are never held together with another lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::MediaBehaviour;
use super::audio::{Codec, mix64};

/// How one recording's media responses behave (the real service's undocumented freedoms).
///
/// `not_found_first` and `errors_first` count the content requests that would otherwise be
/// served: authorized, admitted by the rate limiter, for a recording that can be fetched by now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MediaQuirks {
    /// Bodies are sent chunked, without `Content-Length`.
    pub chunked: bool,
    /// With `chunked`: the body is delimited by closing the connection instead (an HTTP/1.0
    /// answer, as an old server or a proxy sends), so a cut looks like the body's clean end.
    pub close_delimited: bool,
    /// How a `Range` request is answered.
    pub range: RangeMode,
    /// How a `Range` at or past the end is answered (not used with [`RangeMode::Ignore`], which
    /// answers every request with the whole body).
    pub past_end: PastEnd,
    /// Answer `audio/x-wav` instead of `audio/wav` (WAV recordings only; MP3 is always
    /// `audio/mpeg`). The recording's metadata says the same.
    pub x_wav: bool,
    /// Content offsets at which a response is cut (connection dropped mid-body after the bytes
    /// before the offset were sent). Each offset fires once: on the first response whose body
    /// reaches it (a response that is abandoned earlier leaves it armed).
    pub drop_at: Vec<u64>,
    /// Body speed cap, bytes per second (the lower of this and `Faults::max_bytes_per_sec` wins).
    pub bytes_per_sec: Option<u64>,
    /// The first N media requests for this recording (after the ones `not_found_first` refused)
    /// are answered 5xx: 503 `CMN-201` with `Retry-After: 1`, 500, 502 in turn.
    pub errors_first: u32,
    /// The first N media requests for this recording are answered 404 `CMN-102` (still being
    /// processed), then it is served.
    pub not_found_first: u32,
}

/// How a media host answers `Range`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RangeMode {
    /// 206 with `Content-Range: bytes a-b/N` and `Accept-Ranges: bytes`.
    #[default]
    Honour,
    /// Always 200 with the whole body, no `Accept-Ranges`.
    Ignore,
    /// 206 with `Content-Range: bytes a-b/*` (the total is not told).
    UnknownTotal,
    /// 206 covering at most this many bytes (at least 1), even for an open-ended `bytes=a-`
    /// (`Content-Range: bytes a-b/N`); a request without `Range` still gets 200 with the whole body.
    Capped(u64),
}

/// How a media host refuses a `Range` that starts at or past the end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PastEnd {
    /// 416 `CMN-107` with `Content-Range: bytes */N`.
    #[default]
    RangeNotSatisfiable,
    /// 416 `CMN-107` without `Content-Range`.
    Bare416,
    /// 200 with the whole body, as a server ignoring the range would.
    WholeBody,
}

/// A stream of draws for one recording: SplitMix64 over a key mixed from the seed and the id.
struct Draws(u64);

impl Draws {
    fn new(seed: u64, recording_id: &str) -> Draws {
        // FNV-1a of the id, then mixed with the seed: ids that differ in one digit draw apart.
        let id = recording_id.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
        });
        Draws(mix64(seed ^ mix64(id ^ 0x0051_C0DE)))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }
    /// Uniform in `0.0..1.0`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

impl MediaQuirks {
    /// A realistic mix for one recording, deterministic from `(seed, recording_id)`; `len` is the
    /// recording's size (drop offsets fall inside it). Every field is drawn on its own:
    /// chunked 50 % (of which 40 % delimited by the connection's close instead); Range honoured 40 %, ignored 25 %, unknown total 15 %, capped at
    /// 64 KiB..1 MiB 20 %; past the end 416 with `Content-Range` 50 %, bare 416 25 %, whole body
    /// 25 %; `audio/x-wav` 50 %; 0 (50 %), 1 (30 %) or 2 (20 %) drop offsets; a speed cap of
    /// 2..8 MiB/s 20 %; 5xx first 0 (80 %), 1 or 2; 404 first 0 (85 %) or 1.
    ///
    /// Every mix can be downloaded whole by a client that retries and resumes: at most one 404,
    /// two 5xx and two cuts stand before the bytes.
    pub fn draw(seed: u64, recording_id: &str, len: u64) -> MediaQuirks {
        let mut d = Draws::new(seed, recording_id);
        // Every field takes the same draws whatever they decide, so each depends on its own
        // draws only, and the length moves nothing but the drop offsets.
        let chunked = d.unit() < 0.5;
        let (mode, cap) = (d.unit(), d.between(64 * KIB, MIB));
        let range = match mode {
            u if u < 0.40 => RangeMode::Honour,
            u if u < 0.65 => RangeMode::Ignore,
            u if u < 0.80 => RangeMode::UnknownTotal,
            _ => RangeMode::Capped(cap),
        };
        let past_end = match d.unit() {
            u if u < 0.50 => PastEnd::RangeNotSatisfiable,
            u if u < 0.75 => PastEnd::Bare416,
            _ => PastEnd::WholeBody,
        };
        let x_wav = d.unit() < 0.5;
        let (drops, offsets) = (d.unit(), [d.next(), d.next()]);
        let drops = match drops {
            _ if len < 2 => 0,
            u if u < 0.5 => 0,
            u if u < 0.8 => 1,
            _ => 2,
        };
        let mut drop_at: Vec<u64> = offsets[..drops].iter().map(|x| 1 + x % (len - 1)).collect();
        drop_at.sort_unstable();
        drop_at.dedup();
        let (slow, rate) = (d.unit() < 0.2, d.between(2 * MIB, 8 * MIB));
        let bytes_per_sec = slow.then_some(rate);
        let errors_first = match d.unit() {
            u if u < 0.80 => 0,
            u if u < 0.93 => 1,
            _ => 2,
        };
        let not_found_first = u32::from(d.unit() < 0.15);
        let close_delimited = chunked && d.unit() < 0.4;
        MediaQuirks {
            chunked,
            close_delimited,
            range,
            past_end,
            x_wav,
            drop_at,
            bytes_per_sec,
            errors_first,
            not_found_first,
        }
    }

    /// The quirks the account-wide flags of [`MediaBehaviour`] stand for.
    fn from_flags(b: &MediaBehaviour) -> MediaQuirks {
        MediaQuirks {
            chunked: b.omit_content_length || b.close_delimited,
            close_delimited: b.close_delimited,
            range: if b.ignore_range {
                RangeMode::Ignore
            } else {
                RangeMode::Honour
            },
            x_wav: b.x_wav,
            ..MediaQuirks::default()
        }
    }

    /// How a content request with range `req` (parsed against the body's length) is answered.
    pub(crate) fn answer(&self, req: RangeReq) -> Answer {
        match (self.range, req) {
            (RangeMode::Ignore, _) | (_, RangeReq::Whole) => Answer::Whole,
            (_, RangeReq::Unsatisfiable) => match self.past_end {
                PastEnd::RangeNotSatisfiable => Answer::Unsatisfiable {
                    content_range: true,
                },
                PastEnd::Bare416 => Answer::Unsatisfiable {
                    content_range: false,
                },
                PastEnd::WholeBody => Answer::Whole,
            },
            (RangeMode::Honour, RangeReq::Part(start, end)) => Answer::Part {
                start,
                end,
                total_known: true,
            },
            (RangeMode::UnknownTotal, RangeReq::Part(start, end)) => Answer::Part {
                start,
                end,
                total_known: false,
            },
            (RangeMode::Capped(cap), RangeReq::Part(start, end)) => Answer::Part {
                start,
                end: end.min(start.saturating_add(cap.max(1))),
                total_known: true,
            },
        }
    }
}

/// The content type of a recording served with quirks `q`.
pub(crate) fn content_type(codec: Codec, q: &MediaQuirks) -> &'static str {
    match codec {
        Codec::Wav if q.x_wav => "audio/x-wav",
        c => c.content_type(),
    }
}

/// A parsed single `Range: bytes=...` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RangeReq {
    /// No usable Range: the whole body.
    Whole,
    /// `start..end` (exclusive end), within the body.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// Single-range parsing as HTTP defines it (`a-b`, `a-`, `-n`); several ranges or a malformed
/// header mean the whole body.
pub(crate) fn parse_range(header: Option<&str>, len: u64) -> RangeReq {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeReq::Whole;
    };
    if spec.contains(',') {
        return RangeReq::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last `n` bytes.
        let Ok(n) = b.parse::<u64>() else {
            return RangeReq::Whole;
        };
        if n == 0 || len == 0 {
            return RangeReq::Unsatisfiable;
        }
        return RangeReq::Part(len - n.min(len), len);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeReq::Whole;
    };
    let end = if b.is_empty() {
        len
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.saturating_add(1).min(len),
            _ => return RangeReq::Whole,
        }
    };
    if start >= len {
        return RangeReq::Unsatisfiable;
    }
    RangeReq::Part(start, end)
}

/// What a content request is answered with, once the quirks have decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// 200 with the whole body.
    Whole,
    /// 206 with bytes `start..end`; `Content-Range` ends in `/N` or, without a known total, `/*`.
    Part {
        start: u64,
        end: u64,
        total_known: bool,
    },
    /// 416 `CMN-107`, with or without `Content-Range: bytes */N`.
    Unsatisfiable { content_range: bool },
}

/// What stands before the content for one request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// 404 `CMN-102`: still being processed.
    NotFound,
    /// The `n`-th (0-based) 5xx of this recording.
    ServerError(u64),
    /// Serve the content.
    Serve,
}

/// A point where a response body breaks off: after `at` body bytes.
#[derive(Debug)]
pub(crate) struct Cut {
    pub at: u64,
    /// A drop offset fires once: the first response to reach it claims this flag. `None`: an
    /// account-wide fault cut, which fires whenever reached.
    once: Option<Arc<AtomicBool>>,
}

impl Cut {
    /// A cut that fires whenever reached.
    pub fn always(at: u64) -> Cut {
        Cut { at, once: None }
    }

    /// Whether the body breaks off here (false when another response fired this offset first).
    pub fn claim(&self) -> bool {
        self.once
            .as_ref()
            .is_none_or(|f| !f.swap(true, Ordering::SeqCst))
    }
}

/// What one recording has seen since its quirks were set.
#[derive(Debug, Default)]
struct Progress {
    /// Content requests that reached the quirks (authorized, admitted, recording fetchable).
    seen: u64,
    /// Per drop offset: whether it has fired.
    fired: HashMap<u64, Arc<AtomicBool>>,
}

/// The quirks' state while serving (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct PerRecording {
    /// Quirks set with `Emulator::set_media_quirks`; they win over the configuration.
    overrides: Mutex<HashMap<String, MediaQuirks>>,
    progress: Mutex<HashMap<String, Progress>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PerRecording {
    /// The quirks in force for a recording of `len` bytes: set at runtime, else configured for
    /// this id, else drawn from `media.mixed`, else the account-wide flags.
    pub fn resolve(&self, media: &MediaBehaviour, recording_id: &str, len: u64) -> MediaQuirks {
        if let Some(q) = lock(&self.overrides).get(recording_id) {
            return q.clone();
        }
        if let Some(q) = media.per_recording.get(recording_id) {
            return q.clone();
        }
        match media.mixed {
            Some(seed) => MediaQuirks::draw(seed, recording_id, len),
            None => MediaQuirks::from_flags(media),
        }
    }

    /// Sets a recording's quirks; its request count and fired drops start afresh, so that
    /// `not_found_first`, `errors_first` and `drop_at` count from now.
    pub fn set(&self, recording_id: &str, q: MediaQuirks) {
        lock(&self.overrides).insert(recording_id.to_string(), q);
        lock(&self.progress).remove(recording_id);
    }

    /// Counts one request for the recording and tells what stands before its content.
    pub fn gate(&self, recording_id: &str, q: &MediaQuirks) -> Gate {
        let mut progress = lock(&self.progress);
        let p = progress.entry(recording_id.to_string()).or_default();
        let n = p.seen;
        p.seen += 1;
        let not_found = u64::from(q.not_found_first);
        if n < not_found {
            Gate::NotFound
        } else if n < not_found + u64::from(q.errors_first) {
            Gate::ServerError(n - not_found)
        } else {
            Gate::Serve
        }
    }

    /// The armed drop offsets strictly inside `start..end`, as cuts relative to `start`, in order.
    pub fn cuts(&self, recording_id: &str, q: &MediaQuirks, start: u64, end: u64) -> Vec<Cut> {
        if q.drop_at.is_empty() {
            return Vec::new();
        }
        let mut progress = lock(&self.progress);
        let p = progress.entry(recording_id.to_string()).or_default();
        let mut offsets: Vec<u64> = q
            .drop_at
            .iter()
            .copied()
            .filter(|&d| start < d && d < end)
            .collect();
        offsets.sort_unstable();
        offsets.dedup();
        offsets
            .into_iter()
            .filter_map(|d| {
                let flag = p.fired.entry(d).or_default();
                (!flag.load(Ordering::SeqCst)).then(|| Cut {
                    at: d - start,
                    once: Some(flag.clone()),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draw_is_deterministic_and_spread() {
        let n = 10_000;
        let draws: Vec<MediaQuirks> = (0..n)
            .map(|i| MediaQuirks::draw(7, &format!("{}", 50_000_000 + i), 1_000_000))
            .collect();
        let again: Vec<MediaQuirks> = (0..n)
            .map(|i| MediaQuirks::draw(7, &format!("{}", 50_000_000 + i), 1_000_000))
            .collect();
        assert_eq!(draws, again);
        assert_ne!(
            draws,
            (0..n)
                .map(|i| MediaQuirks::draw(8, &format!("{}", 50_000_000 + i), 1_000_000))
                .collect::<Vec<_>>()
        );
        let share = |f: &dyn Fn(&MediaQuirks) -> bool| {
            draws.iter().filter(|q| f(q)).count() as f64 / n as f64
        };
        let near = |got: f64, want: f64| (got - want).abs() < 0.03;
        assert!(near(share(&|q| q.chunked), 0.5));
        assert!(near(share(&|q| q.close_delimited), 0.5 * 0.4));
        assert!(draws.iter().all(|q| q.chunked || !q.close_delimited));
        assert!(near(share(&|q| q.range == RangeMode::Honour), 0.40));
        assert!(near(share(&|q| q.range == RangeMode::Ignore), 0.25));
        assert!(near(share(&|q| q.range == RangeMode::UnknownTotal), 0.15));
        assert!(near(
            share(&|q| matches!(q.range, RangeMode::Capped(_))),
            0.20
        ));
        assert!(near(
            share(&|q| q.past_end == PastEnd::RangeNotSatisfiable),
            0.50
        ));
        assert!(near(share(&|q| q.past_end == PastEnd::Bare416), 0.25));
        assert!(near(share(&|q| q.x_wav), 0.5));
        assert!(near(share(&|q| q.drop_at.is_empty()), 0.5));
        assert!(near(share(&|q| q.bytes_per_sec.is_none()), 0.8));
        assert!(near(share(&|q| q.errors_first == 0), 0.8));
        assert!(near(share(&|q| q.not_found_first == 0), 0.85));
        for q in &draws {
            if let RangeMode::Capped(c) = q.range {
                assert!((64 * KIB..=MIB).contains(&c), "{c}");
            }
            assert!(
                q.drop_at.len() <= 2 && q.drop_at.iter().all(|&d| 0 < d && d < 1_000_000),
                "{:?}",
                q.drop_at
            );
            assert!(q.drop_at.windows(2).all(|w| w[0] < w[1]));
            assert!(
                q.bytes_per_sec
                    .is_none_or(|r| (2 * MIB..=8 * MIB).contains(&r))
            );
            assert!(q.errors_first <= 2 && q.not_found_first <= 1);
        }
        // Fields are drawn independently: chunked says nothing about the range mode.
        let chunked_ignore = share(&|q| q.chunked && q.range == RangeMode::Ignore);
        assert!(near(chunked_ignore, 0.5 * 0.25), "{chunked_ignore}");
        // Tiny recordings have no room for a drop; the length changes nothing else.
        for (i, q) in draws.iter().enumerate().take(500) {
            let tiny = MediaQuirks::draw(7, &format!("{}", 50_000_000 + i), 1);
            assert_eq!(
                tiny,
                MediaQuirks {
                    drop_at: Vec::new(),
                    ..q.clone()
                }
            );
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), RangeReq::Whole);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), RangeReq::Part(0, 10));
        assert_eq!(parse_range(Some("bytes=90-"), 100), RangeReq::Part(90, 100));
        assert_eq!(parse_range(Some("bytes=-10"), 100), RangeReq::Part(90, 100));
        assert_eq!(
            parse_range(Some("bytes=-1000"), 100),
            RangeReq::Part(0, 100)
        );
        assert_eq!(
            parse_range(Some("bytes=50-1000"), 100),
            RangeReq::Part(50, 100)
        );
        assert_eq!(
            parse_range(Some("bytes=100-"), 100),
            RangeReq::Unsatisfiable
        );
        // The largest last-byte position: one past it must not overflow.
        assert_eq!(
            parse_range(Some("bytes=5-18446744073709551615"), 100),
            RangeReq::Part(5, 100)
        );
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), RangeReq::Whole);
        assert_eq!(parse_range(Some("bytes=9-2"), 100), RangeReq::Whole);
        assert_eq!(parse_range(Some("items=0-1"), 100), RangeReq::Whole);
    }

    #[test]
    fn answers_per_range_mode_and_past_end() {
        let q = |range, past_end| MediaQuirks {
            range,
            past_end,
            ..MediaQuirks::default()
        };
        let honour = q(RangeMode::Honour, PastEnd::RangeNotSatisfiable);
        assert_eq!(honour.answer(RangeReq::Whole), Answer::Whole);
        assert_eq!(
            honour.answer(RangeReq::Part(10, 100)),
            Answer::Part {
                start: 10,
                end: 100,
                total_known: true
            }
        );
        assert_eq!(
            honour.answer(RangeReq::Unsatisfiable),
            Answer::Unsatisfiable {
                content_range: true
            }
        );
        let ignore = q(RangeMode::Ignore, PastEnd::Bare416);
        assert_eq!(ignore.answer(RangeReq::Part(10, 100)), Answer::Whole);
        assert_eq!(ignore.answer(RangeReq::Unsatisfiable), Answer::Whole);
        let unknown = q(RangeMode::UnknownTotal, PastEnd::Bare416);
        assert_eq!(
            unknown.answer(RangeReq::Part(10, 20)),
            Answer::Part {
                start: 10,
                end: 20,
                total_known: false
            }
        );
        assert_eq!(
            unknown.answer(RangeReq::Unsatisfiable),
            Answer::Unsatisfiable {
                content_range: false
            }
        );
        let capped = q(RangeMode::Capped(30), PastEnd::WholeBody);
        assert_eq!(
            capped.answer(RangeReq::Part(10, 100)),
            Answer::Part {
                start: 10,
                end: 40,
                total_known: true
            }
        );
        assert_eq!(
            capped.answer(RangeReq::Part(90, 100)),
            Answer::Part {
                start: 90,
                end: 100,
                total_known: true
            }
        );
        assert_eq!(capped.answer(RangeReq::Whole), Answer::Whole);
        assert_eq!(capped.answer(RangeReq::Unsatisfiable), Answer::Whole);
        let zero = q(RangeMode::Capped(0), PastEnd::RangeNotSatisfiable);
        assert_eq!(
            zero.answer(RangeReq::Part(10, 100)),
            Answer::Part {
                start: 10,
                end: 11,
                total_known: true
            }
        );
    }

    #[test]
    fn gates_count_per_recording_and_drops_fire_once() {
        let st = PerRecording::default();
        let q = MediaQuirks {
            not_found_first: 1,
            errors_first: 2,
            drop_at: vec![50, 20],
            ..MediaQuirks::default()
        };
        let gates: Vec<Gate> = (0..5).map(|_| st.gate("a", &q)).collect();
        assert_eq!(
            gates,
            [
                Gate::NotFound,
                Gate::ServerError(0),
                Gate::ServerError(1),
                Gate::Serve,
                Gate::Serve
            ]
        );
        assert_eq!(
            st.gate("b", &q),
            Gate::NotFound,
            "each recording counts its own requests"
        );

        let at = |cuts: &[Cut]| cuts.iter().map(|c| c.at).collect::<Vec<_>>();
        assert_eq!(at(&st.cuts("a", &q, 0, 100)), [20, 50]);
        assert_eq!(
            at(&st.cuts("a", &q, 20, 100)),
            [30],
            "a body starting at the offset does not cross it"
        );
        assert!(
            st.cuts("a", &q, 0, 20).is_empty(),
            "nor does one ending there"
        );
        // Two responses armed with the same offset: only the first to reach it is cut.
        let (first, second) = (st.cuts("a", &q, 0, 100), st.cuts("a", &q, 10, 100));
        assert!(second[0].claim());
        assert!(!first[0].claim());
        assert_eq!(at(&st.cuts("a", &q, 0, 100)), [50]);
        assert!(Cut::always(5).claim() && Cut::always(5).claim());

        // Setting the quirks starts the counts afresh and wins over the configuration.
        let media = MediaBehaviour {
            mixed: Some(3),
            ..MediaBehaviour::default()
        };
        assert_eq!(st.resolve(&media, "a", 100), MediaQuirks::draw(3, "a", 100));
        st.set("a", q.clone());
        assert_eq!(st.resolve(&media, "a", 100), q);
        assert_eq!(st.gate("a", &q), Gate::NotFound);
        assert_eq!(at(&st.cuts("a", &q, 0, 100)), [20, 50]);
    }

    #[test]
    fn flags_and_configured_quirks() {
        let st = PerRecording::default();
        let flags = MediaBehaviour {
            omit_content_length: true,
            ignore_range: true,
            x_wav: true,
            ..MediaBehaviour::default()
        };
        let want = MediaQuirks {
            chunked: true,
            range: RangeMode::Ignore,
            x_wav: true,
            ..MediaQuirks::default()
        };
        assert_eq!(st.resolve(&flags, "a", 100), want);
        assert_eq!(
            st.resolve(&MediaBehaviour::default(), "a", 100),
            MediaQuirks::default()
        );
        let one = MediaQuirks {
            errors_first: 1,
            ..MediaQuirks::default()
        };
        let configured = MediaBehaviour {
            mixed: Some(9),
            per_recording: [("a".to_string(), one.clone())].into(),
            ..flags
        };
        assert_eq!(
            st.resolve(&configured, "a", 100),
            one,
            "an id's quirks win over the mix"
        );
        assert_eq!(
            st.resolve(&configured, "b", 100),
            MediaQuirks::draw(9, "b", 100),
            "the mix wins over the flags"
        );
    }
}
