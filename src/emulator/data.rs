//! The emulated account's calls, generated deterministically from the seed.
//!
//! A data set is `config.calls` generated calls plus the example call (recording 44444444, the
//! one the README uses), then the configured extra calls. Call `i` is a pure function of
//! `(seed, i, now)`: its attributes come from a SplitMix64 stream seeded with `(seed, i)`, its
//! time from `now`. The first dozen indices are "special" calls that pin down the cases a
//! filesystem must get right (a call still in progress, one ending within the minute, one just
//! ended but not yet in the call log, calls at 23:59:30 and 00:00:10 UTC, a name with `/`, unicode
//! names, an extension-only party, a call without a recording, an hour-long and a seconds-long
//! call); the rest are drawn from distributions that look like a small office.
//! `--live` calls continue the same numbering after the data set.
//!
//! Metadata only: the audio of a recording is produced on demand by [`super::audio`].

use super::AudioFormat;
use super::audio::{AudioSpec, Codec, mix64};

/// The account every emulated resource lives in.
pub(crate) const ACCOUNT_ID: &str = "11111111";
/// The authorized user's extension id (Jane Doe, who took the example call).
pub(crate) const OWNER_EXTENSION_ID: &str = "22222222";

/// One extension (user) of the account.
#[derive(Debug)]
pub(crate) struct Extension {
    pub id: &'static str,
    pub number: &'static str,
    pub name: &'static str,
    pub phone: &'static str,
}

/// The account's users; index 0 is the authorized user.
pub(crate) const EXTENSIONS: [Extension; 6] = [
    Extension {
        id: "22222222",
        number: "101",
        name: "Jane Doe",
        phone: "+16505550100",
    },
    Extension {
        id: "22222223",
        number: "102",
        name: "Bob Li",
        phone: "+16505550101",
    },
    Extension {
        id: "22222224",
        number: "103",
        name: "María-José Núñez",
        phone: "+16505550102",
    },
    Extension {
        id: "22222225",
        number: "104",
        name: "Support / Escalations",
        phone: "+16505550103",
    },
    Extension {
        id: "22222226",
        number: "105",
        name: "Ahmed Al-Farsi",
        phone: "+16505550104",
    },
    Extension {
        id: "22222227",
        number: "106",
        name: "陈伟",
        phone: "+16505550105",
    },
];

const EXTERNAL_NAMES: [&str; 14] = [
    "John Smith",
    "Acme Corp",
    "AC/DC Tribute Band",
    "Zoë Ångström",
    "Łukasz Żółć",
    "山田太郎",
    "Олег Петров",
    "O'Brien, Pat",
    "WIRELESS CALLER",
    "Dr. Müller & Söhne",
    "Σοφία Παπαδοπούλου",
    "Nguyễn Văn An",
    "Priya Raman",
    "Carlos \"Charlie\" Díaz",
];

/// Where a call's recording came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordingKind {
    Automatic,
    OnDemand,
}

impl RecordingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingKind::Automatic => "Automatic",
            RecordingKind::OnDemand => "OnDemand",
        }
    }
}

/// A recording attached to a call.
#[derive(Clone, Debug)]
pub(crate) struct Recording {
    pub id: String,
    pub kind: RecordingKind,
    pub audio: AudioSpec,
}

/// One side of a call as the call log shows it; every field may be missing.
#[derive(Clone, Debug, Default)]
pub(crate) struct Party {
    pub phone_number: Option<String>,
    pub extension_number: Option<&'static str>,
    pub extension_id: Option<&'static str>,
    pub name: Option<String>,
    pub location: Option<&'static str>,
}

/// Outcome of a call (`result`, `reason`, `reasonDescription`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Accepted,
    Connected,
    Missed,
}

impl Outcome {
    pub fn result(self) -> &'static str {
        match self {
            Outcome::Accepted => "Accepted",
            Outcome::Connected => "Call connected",
            Outcome::Missed => "Missed",
        }
    }
    pub fn reason(self) -> &'static str {
        match self {
            Outcome::Accepted => "Accepted",
            Outcome::Connected => "CallConnected",
            Outcome::Missed => "Missed",
        }
    }
    pub fn description(self) -> &'static str {
        match self {
            Outcome::Accepted => "The call connected to and was accepted by this number.",
            Outcome::Connected => "The call was connected to and accepted by this number.",
            Outcome::Missed => "The call was missed.",
        }
    }
}

/// One call of the data set. Times are Unix milliseconds.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub call_log_id: String,
    pub session_id: String,
    pub telephony_session_id: String,
    pub start_ms: i64,
    pub duration_s: u32,
    pub inbound: bool,
    pub from: Party,
    pub to: Party,
    /// Index into [`EXTENSIONS`]: whose call log the record belongs to.
    pub owner: usize,
    pub outcome: Outcome,
    pub recording: Option<Recording>,
    /// The call was recorded but too short to keep (`shortRecording: true`, no `recording`).
    pub short_recording: bool,
    /// Detailed view: a second, non-master leg (a ring-group forward).
    pub two_legs: bool,
    /// Served with only the required fields (see [`super::ExtraCall::sparse`]).
    pub sparse: bool,
}

impl Call {
    pub fn end_ms(&self) -> i64 {
        self.start_ms + i64::from(self.duration_s) * 1000
    }
    pub fn extension(&self) -> &'static Extension {
        &EXTENSIONS[self.owner]
    }
}

/// A SplitMix64 stream.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64, stream: u64) -> Rng {
        Rng(mix64(
            seed ^ mix64(stream.wrapping_add(0x5851_F42D_4C95_7F2D)),
        ))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn base62(mut a: u64, mut b: u64, len: usize) -> String {
    let mut s = String::with_capacity(len);
    for i in 0..len {
        let v = if i % 2 == 0 { &mut a } else { &mut b };
        s.push(BASE62[(*v % 62) as usize] as char);
        *v /= 62;
    }
    s
}

/// Special roles of the first indices of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Special {
    InProgress,
    EndsWithinMinute,
    JustEnded,
    BeforeMidnight,
    AfterMidnight,
    SlashName,
    UnicodeName,
    ExtensionOnly,
    NoRecording,
    UkNumber,
    HourLong,
    SecondsLong,
}

const SPECIALS: [Special; 12] = [
    Special::InProgress,
    Special::EndsWithinMinute,
    Special::JustEnded,
    Special::BeforeMidnight,
    Special::AfterMidnight,
    Special::SlashName,
    Special::UnicodeName,
    Special::ExtensionOnly,
    Special::NoRecording,
    Special::UkNumber,
    Special::HourLong,
    Special::SecondsLong,
];

const DAY_MS: i64 = 86_400_000;

/// Inputs of the generator that do not change while the emulator runs.
#[derive(Clone, Debug)]
pub(crate) struct Generator {
    pub seed: u64,
    pub format: AudioFormat,
    /// "Now" at emulator start, Unix ms.
    pub now_ms: i64,
    pub days: u32,
    /// How long after its end a call shows in the call log (to place the "just ended" call).
    pub record_delay_ms: i64,
}

impl Generator {
    fn codec(&self, key: u64) -> Codec {
        match self.format {
            AudioFormat::Mp3 => Codec::Mp3,
            AudioFormat::Wav => Codec::Wav,
            AudioFormat::Mixed => {
                if key % 3 == 0 {
                    Codec::Wav
                } else {
                    Codec::Mp3
                }
            }
        }
    }

    fn external_number(rng: &mut Rng, uk: bool) -> (String, Option<&'static str>) {
        let roll = if uk { 0 } else { rng.below(10) };
        match roll {
            0 => (
                format!("+44207946{:04}", rng.below(10_000)),
                Some("London, United Kingdom"),
            ),
            1 => (
                format!("+4930{:08}", rng.below(100_000_000)),
                Some("Berlin, Germany"),
            ),
            2 => (format!("+8135550{:04}", rng.below(10_000)), None),
            3 => (
                format!("+33155{:06}", rng.below(1_000_000)),
                Some("Paris, France"),
            ),
            _ => {
                let (area, loc) = *rng.pick(&[
                    ("415", Some("San Francisco, CA")),
                    ("212", Some("New York, NY")),
                    ("312", Some("Chicago, IL")),
                    ("206", None),
                    ("512", Some("Austin, TX")),
                ]);
                (format!("+1{area}555{:04}", rng.below(10_000)), loc)
            }
        }
    }

    fn duration(rng: &mut Rng) -> u32 {
        let roll = rng.below(100);
        (match roll {
            0..5 => rng.range(1, 8),
            5..20 => rng.range(9, 60),
            20..80 => rng.range(61, 360),
            80..95 => rng.range(361, 1200),
            _ => rng.range(1201, 3600),
        }) as u32
    }

    /// Call number `index` of the data set (`live == false`) or of the live stream.
    pub fn call(&self, index: u64, start_ms: Option<i64>, live: bool) -> Call {
        let mut rng = Rng::new(self.seed, index);
        let special = if live {
            None
        } else {
            SPECIALS.get(index as usize).copied()
        };
        let mut duration_s = Self::duration(&mut rng);
        if live {
            duration_s = duration_s.min(600);
        }
        match special {
            Some(Special::HourLong) => duration_s = 3600,
            Some(Special::SecondsLong) => duration_s = 3,
            Some(Special::InProgress) => duration_s = rng.range(300, 900) as u32,
            Some(Special::EndsWithinMinute | Special::JustEnded) => {
                duration_s = rng.range(60, 240) as u32
            }
            _ => {}
        }
        let dur_ms = i64::from(duration_s) * 1000;
        // The last `days` dates in UTC, today's part included, as a mount's `--days` counts
        // them: every generated call is on one of those dates, whatever the time of day.
        let span_ms = self.now_ms.rem_euclid(DAY_MS) + (i64::from(self.days.max(1)) - 1) * DAY_MS;
        let start_ms = if let Some(s) = start_ms {
            s
        } else {
            match special {
                // Still going: ends 2..10 minutes after start.
                Some(Special::InProgress) => {
                    self.now_ms + rng.range(120_000, 600_000) as i64 - dur_ms
                }
                Some(Special::EndsWithinMinute) => {
                    self.now_ms + rng.range(5_000, 55_000) as i64 - dur_ms
                }
                // Ended, but its record is not in the call log yet.
                Some(Special::JustEnded) => {
                    self.now_ms - (self.record_delay_ms / 2).max(1) - dur_ms
                }
                Some(Special::BeforeMidnight | Special::AfterMidnight) => {
                    let days_back = i64::from(self.days.clamp(1, 3)) - 1;
                    let midnight = (self.now_ms.div_euclid(DAY_MS) - days_back) * DAY_MS;
                    if special == Some(Special::BeforeMidnight) {
                        midnight - 30_000
                    } else {
                        midnight + 10_000
                    }
                }
                _ => {
                    let latest = self.now_ms - dur_ms - 120_000;
                    // Ended two minutes ago at the latest and started within the span (but
                    // for a span shorter than the call, just after midnight with one date).
                    latest
                        - (rng.below(span_ms.max(1) as u64) as i64)
                            .min(span_ms - dur_ms - 120_000)
                            .max(0)
                }
            }
        };

        let owner = if rng.below(3) == 0 {
            0
        } else {
            1 + rng.below(EXTENSIONS.len() as u64 - 1) as usize
        };
        let owner = if special == Some(Special::InProgress) {
            0
        } else {
            owner
        };
        let ext = &EXTENSIONS[owner];
        let inbound = rng.below(100) < 60;
        let internal = match special {
            Some(Special::ExtensionOnly) => true,
            Some(Special::UkNumber | Special::SlashName | Special::UnicodeName) => false,
            _ => rng.below(100) < 10,
        };
        let me = Party {
            phone_number: Some(ext.phone.to_string()),
            extension_number: if inbound { None } else { Some(ext.number) },
            extension_id: Some(ext.id),
            name: Some(ext.name.to_string()),
            location: None,
        };
        let other = if internal {
            let mut peer = 1 + rng.below(EXTENSIONS.len() as u64 - 1) as usize;
            if peer == owner {
                peer = 0;
            }
            let p = &EXTENSIONS[peer];
            Party {
                phone_number: None,
                extension_number: Some(p.number),
                extension_id: Some(p.id),
                name: Some(p.name.to_string()),
                location: None,
            }
        } else {
            let (number, location) =
                Self::external_number(&mut rng, special == Some(Special::UkNumber));
            let name = match special {
                Some(Special::SlashName) => Some("AC/DC Tribute Band".to_string()),
                Some(Special::UnicodeName) => Some("Zoë Ångström".to_string()),
                _ if rng.below(100) < 30 => None,
                _ => Some(rng.pick(&EXTERNAL_NAMES).to_string()),
            };
            let location = if rng.chance(0.7) { location } else { None };
            Party {
                phone_number: Some(number),
                name,
                location,
                ..Party::default()
            }
        };
        let me = if internal {
            Party {
                extension_number: Some(ext.number),
                ..me
            }
        } else {
            me
        };
        let (from, to) = if inbound { (other, me) } else { (me, other) };

        let recorded = match special {
            Some(Special::NoRecording) => false,
            Some(_) => true,
            None => rng.below(100) < 80,
        };
        let outcome = if !recorded && inbound && rng.chance(0.5) {
            Outcome::Missed
        } else if inbound {
            Outcome::Accepted
        } else {
            Outcome::Connected
        };
        let short = recorded && duration_s < 5 && special != Some(Special::SecondsLong);
        let recording = (recorded && !short).then(|| {
            let id = (50_000_000 + index * 13 + rng.below(13)).to_string();
            let key = mix64(self.seed ^ mix64(index ^ 0xA5A5_A5A5));
            Recording {
                id,
                kind: if rng.below(5) == 0 {
                    RecordingKind::OnDemand
                } else {
                    RecordingKind::Automatic
                },
                audio: AudioSpec {
                    codec: self.codec(key),
                    key,
                    duration_s,
                },
            }
        });
        let (a, b) = (rng.next_u64(), rng.next_u64());
        let session =
            3_000_000_000 + (self.seed % 1000) * 1_000_000_000 + index * 1009 + rng.below(1000);
        Call {
            call_log_id: base62(a, b, 22),
            session_id: session.to_string(),
            telephony_session_id: format!("s-a{:016x}{:016x}", rng.next_u64(), mix64(a ^ b)),
            start_ms,
            duration_s,
            inbound,
            from,
            to,
            owner,
            outcome,
            recording,
            short_recording: short,
            two_legs: inbound && rng.below(4) == 0,
            sparse: false,
        }
    }

    /// The example call: John Smith to Jane Doe, session 1234567890, recording 44444444, ended
    /// within the last day and already fetchable at start, so fixed ids always find something.
    pub fn seed_call(&self) -> Call {
        let mut rng = Rng::new(self.seed, u64::MAX);
        let start_ms = self.now_ms - 2 * 3_600_000 - rng.below(6 * 3_600_000) as i64;
        let key = mix64(self.seed ^ 44_444_444);
        Call {
            call_log_id: "1234567890ABCDEFGabcdefgh".into(),
            session_id: "1234567890".into(),
            telephony_session_id: "1234567890ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                .into(),
            start_ms,
            duration_s: 35,
            inbound: true,
            from: Party {
                phone_number: Some("+14155550100".into()),
                name: Some("John Smith".into()),
                location: Some("San Francisco, CA"),
                ..Party::default()
            },
            to: Party {
                phone_number: Some("+16505550100".into()),
                name: Some("Jane Doe".into()),
                extension_id: Some(OWNER_EXTENSION_ID),
                ..Party::default()
            },
            owner: 0,
            outcome: Outcome::Accepted,
            recording: Some(Recording {
                id: "44444444".into(),
                kind: RecordingKind::OnDemand,
                audio: AudioSpec {
                    codec: self.codec(key),
                    key,
                    duration_s: 35,
                },
            }),
            short_recording: false,
            two_legs: false,
            sparse: false,
        }
    }

    /// An injected call (see [`super::ExtraCall`]), number `index` of the data set; it belongs to
    /// the authorized user.
    pub fn extra(&self, index: u64, x: &super::ExtraCall) -> Call {
        let ext = &EXTENSIONS[0];
        let me = Party {
            phone_number: Some(ext.phone.to_string()),
            extension_id: Some(ext.id),
            name: Some(ext.name.to_string()),
            ..Party::default()
        };
        let other = Party {
            phone_number: x.other_number.clone(),
            name: x.other_name.clone(),
            ..Party::default()
        };
        let (from, to) = if x.inbound { (other, me) } else { (me, other) };
        let key = mix64(self.seed ^ mix64(index ^ 0xE47A_E47A));
        let mut rng = Rng::new(self.seed, index ^ 0xE47A);
        Call {
            call_log_id: base62(rng.next_u64(), rng.next_u64(), 22),
            session_id: x.session_id.clone(),
            telephony_session_id: format!("s-x{:016x}", rng.next_u64()),
            start_ms: x.start.as_millisecond(),
            duration_s: x.duration_s,
            inbound: x.inbound,
            from,
            to,
            owner: 0,
            outcome: if x.inbound {
                Outcome::Accepted
            } else {
                Outcome::Connected
            },
            recording: x.recording_id.as_ref().map(|id| Recording {
                id: id.clone(),
                kind: RecordingKind::Automatic,
                audio: AudioSpec {
                    codec: self.codec(key),
                    key,
                    duration_s: x.duration_s,
                },
            }),
            short_recording: false,
            two_legs: false,
            sparse: x.sparse,
        }
    }

    /// A call started on demand (`Emulator::start_call`), number `index`: the generated call of
    /// that number, made the authorized user's, with the given start, length, direction and
    /// (when `recorded`) an automatic recording; never missed.
    pub fn injected(
        &self,
        index: u64,
        start_ms: i64,
        duration_s: u32,
        recorded: bool,
        inbound: bool,
    ) -> Call {
        let mut c = self.call(index, Some(start_ms), true);
        let ext = &EXTENSIONS[0];
        let me = Party {
            phone_number: Some(ext.phone.to_string()),
            extension_id: Some(ext.id),
            name: Some(ext.name.to_string()),
            ..Party::default()
        };
        let other = if c.inbound {
            c.from.clone()
        } else {
            c.to.clone()
        };
        let other = if other.extension_id == Some(ext.id) {
            Party {
                phone_number: Some("+14155550199".into()),
                ..Party::default()
            }
        } else {
            other
        };
        (c.from, c.to) = if inbound { (other, me) } else { (me, other) };
        c.inbound = inbound;
        c.owner = 0;
        c.duration_s = duration_s;
        c.outcome = if inbound {
            Outcome::Accepted
        } else {
            Outcome::Connected
        };
        c.short_recording = false;
        c.two_legs = false;
        let key = mix64(self.seed ^ mix64(index ^ 0x1A1E_C7ED));
        c.recording = recorded.then(|| Recording {
            id: (60_000_000 + index).to_string(),
            kind: RecordingKind::Automatic,
            audio: AudioSpec {
                codec: self.codec(key),
                key,
                duration_s,
            },
        });
        c
    }

    /// The whole initial data set: `calls` generated calls plus the seed call.
    pub fn initial(&self, calls: usize, extra: &[super::ExtraCall]) -> Vec<Call> {
        let mut v: Vec<Call> = (0..calls as u64)
            .map(|i| self.call(i, None, false))
            .collect();
        v.push(self.seed_call());
        v.extend(
            extra
                .iter()
                .enumerate()
                .map(|(i, x)| self.extra(calls as u64 + 1 + i as u64, x)),
        );
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator() -> Generator {
        Generator {
            seed: 1,
            format: AudioFormat::Mixed,
            now_ms: 1_780_000_000_000,
            days: 90,
            record_delay_ms: 20_000,
        }
    }

    #[test]
    fn deterministic_and_unique() {
        let g = generator();
        let a = g.initial(2000, &[]);
        let b = g.initial(2000, &[]);
        assert_eq!(a.len(), 2001);
        let mut ids = std::collections::HashSet::new();
        let mut recs = std::collections::HashSet::new();
        let mut sessions = std::collections::HashSet::new();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.call_log_id, y.call_log_id);
            assert_eq!(x.start_ms, y.start_ms);
            assert!(ids.insert(x.call_log_id.clone()));
            assert!(sessions.insert(x.session_id.clone()));
            if let Some(r) = &x.recording {
                assert!(recs.insert(r.id.clone()));
            }
            assert!(x.start_ms >= g.now_ms - 91 * DAY_MS, "{x:?}");
        }
    }

    #[test]
    fn specials_are_present() {
        let g = generator();
        let calls = g.initial(300, &[]);
        assert!(
            calls.iter().any(|c| c.end_ms() > g.now_ms),
            "a call in progress"
        );
        assert!(
            calls
                .iter()
                .any(|c| c.start_ms.rem_euclid(DAY_MS) == DAY_MS - 30_000)
        );
        assert!(
            calls
                .iter()
                .any(|c| c.start_ms.rem_euclid(DAY_MS) == 10_000)
        );
        assert!(calls.iter().any(|c| c.recording.is_none()));
        assert!(
            calls
                .iter()
                .any(|c| c.from.phone_number.is_none() || c.to.phone_number.is_none())
        );
        assert!(calls.iter().any(|c| {
            [&c.from, &c.to].iter().any(|p| {
                p.phone_number.is_some() && p.name.as_deref().is_some_and(|n| n.contains('/'))
            })
        }));
        let owned = calls.iter().filter(|c| c.owner == 0).count();
        assert!(
            (60..160).contains(&owned),
            "about a third belong to the user: {owned}"
        );
    }
}
