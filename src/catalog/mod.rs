//! Pure naming: call-log records -> dates, session directories and file names.
//!
//! Nothing here sends a request or touches FUSE; everything is a function of its arguments, so
//! the rules that users see (what a directory is called, where a call lands at a time-zone edge,
//! what is a desktop probe) are unit-tested here.
//!
//! Names are built so that
//! - they sort chronologically (`HH-MM-SS` and `YYYY-MM-DD HH-MM-SS` prefixes, zero padded),
//! - they say the direction and the other party (number, and name when known),
//! - they end with the session or recording id, so they are unique and stable across remounts,
//! - they are safe on Linux and macOS: no `/`, no `:`, no control or bidi-override characters,
//!   at most 255 bytes (the party text is shortened on a character boundary, never the id).

mod window;

pub use window::Window;

use crate::model::{CallRecord, Party};
use jiff::tz::TimeZone;

/// The longest file name Linux and macOS accept, in bytes.
pub const NAME_MAX: usize = 255;

/// The name of the directory of one local date.
pub fn date_dir_name(date: jiff::civil::Date) -> String {
    date.strftime("%Y-%m-%d").to_string()
}

/// Parses a date directory name back; `None` for anything that is not exactly `YYYY-MM-DD`.
pub fn parse_date_dir(name: &str) -> Option<jiff::civil::Date> {
    if name.len() != 10 {
        return None;
    }
    let date: jiff::civil::Date = name.parse().ok()?;
    (date_dir_name(date) == name).then_some(date)
}

/// The audio format of a recording, as its `Content-Type` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioKind {
    Mp3,
    Wav,
}

impl AudioKind {
    /// From a `Content-Type` value (parameters ignored); `None` for anything that is not audio we
    /// know.
    pub fn from_content_type(content_type: &str) -> Option<AudioKind> {
        let essence = content_type.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "audio/mpeg" | "audio/mp3" | "audio/mpeg3" => Some(AudioKind::Mp3),
            "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => Some(AudioKind::Wav),
            _ => None,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            AudioKind::Mp3 => "mp3",
            AudioKind::Wav => "wav",
        }
    }

    pub fn from_extension(ext: &str) -> Option<AudioKind> {
        match ext {
            "mp3" => Some(AudioKind::Mp3),
            "wav" => Some(AudioKind::Wav),
            _ => None,
        }
    }

    /// Bytes per second of audio, used only to estimate a size before the real one is known.
    /// RingCentral does not document its bit rates; these match the emulator (MP3 32 kbit/s,
    /// WAV 8 kHz 16-bit mono) and a size is replaced by the exact one on first open.
    pub fn estimated_bytes_per_second(self) -> u64 {
        match self {
            AudioKind::Mp3 => 4_000,
            AudioKind::Wav => 16_000,
        }
    }
}

/// Estimated size of a recording of `duration` seconds, before its real size is known.
pub fn estimated_size(kind: AudioKind, duration: u64) -> u64 {
    let header = match kind {
        AudioKind::Mp3 => 0,
        AudioKind::Wav => 44,
    };
    header + duration.max(1) * kind.estimated_bytes_per_second()
}

/// Removes what must never reach a file name: path separators, `:` (macOS Finder shows it as
/// `/`), control characters and bidirectional overrides (which can make `evil\u{202e}3pm.exe`
/// display as something else). Runs of whitespace collapse to one space.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last_space = true;
    for c in text.chars() {
        let c = match c {
            '/' | '\\' | ':' => '-',
            c if c.is_control() => ' ',
            // Bidi marks, embeddings, overrides and isolates; zero-width characters.
            '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}' => continue,
            c if c.is_whitespace() => ' ',
            c => c,
        };
        if c == ' ' {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    let trimmed = out.trim_end().trim_start_matches('.');
    trimmed.to_string()
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn truncate_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim_end()
}

/// How the other party of a call is written: number (or `ext NNN`), then the name when known.
pub fn party_label(party: &Party) -> String {
    let number = party
        .phone_number
        .as_deref()
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .or_else(|| {
            party
                .extension_number
                .as_deref()
                .filter(|n| !n.is_empty())
                .map(|n| format!("ext {n}"))
        })
        .unwrap_or_else(|| "unknown".to_string());
    match party
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        Some(name) => format!("{number} {name}"),
        None => number,
    }
}

/// The party on the other end of the line, seen from the account.
pub fn other_party(record: &CallRecord) -> &Party {
    if record.inbound {
        &record.from
    } else {
        &record.to
    }
}

fn direction_word(record: &CallRecord) -> &'static str {
    if record.inbound { "in" } else { "out" }
}

/// Joins `prefix`, the sanitized party text and the ` id[.ext]` suffix, shortening only the
/// party text so the result fits in [`NAME_MAX`] bytes.
fn compose(prefix: &str, party: &str, suffix: &str) -> String {
    let room = NAME_MAX.saturating_sub(prefix.len() + suffix.len() + 1);
    let party = sanitize(party);
    let party = truncate_bytes(&party, room);
    if party.is_empty() {
        format!("{prefix}{suffix}")
    } else {
        format!("{prefix} {party}{suffix}")
    }
}

/// `HH-MM-SS in +14155550100 John Smith 1234567890`: one directory per call session.
pub fn session_dir_name(record: &CallRecord, tz: &TimeZone) -> String {
    let local = record.start_time.to_zoned_datetime(tz.clone());
    let prefix = format!("{} {}", local.strftime("%H-%M-%S"), direction_word(record));
    let suffix = format!(" {}", sanitize(record.session_id.as_str()));
    compose(&prefix, &party_label(other_party(record)), &suffix)
}

/// `2026-11-23 14-05-12 in +14155550100 John Smith 44444444.mp3`: a recording's name tells a
/// playlist who and when on its own.
pub fn recording_file_name(
    record: &CallRecord,
    recording_id: &str,
    kind: AudioKind,
    tz: &TimeZone,
) -> String {
    let local = record.start_time.to_zoned_datetime(tz.clone());
    let prefix = format!(
        "{} {}",
        local.strftime("%Y-%m-%d %H-%M-%S"),
        direction_word(record)
    );
    let suffix = format!(" {}.{}", sanitize(recording_id), kind.extension());
    compose(&prefix, &party_label(other_party(record)), &suffix)
}

/// The file name in `by-recording/`: `<id>.<ext>`.
pub fn by_recording_name(recording_id: &str, kind: AudioKind) -> String {
    format!("{}.{}", sanitize(recording_id), kind.extension())
}

/// Splits `<id>.<ext>` (a `by-recording/` name, or the tail of a recording file name) into the
/// id and the audio kind its extension claims.
pub fn split_recording_name(name: &str) -> Option<(&str, AudioKind)> {
    let (stem, ext) = name.rsplit_once('.')?;
    let kind = AudioKind::from_extension(ext)?;
    let id = stem.rsplit(' ').next()?;
    is_plausible_id(id).then_some((id, kind))
}

/// RingCentral ids are decimal or alphanumeric tokens; anything else cannot be one and is refused
/// before it costs a request.
pub fn is_plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Names that desktops, shells and thumbnailers probe for on every mount. They never exist here;
/// answering ENOENT at once, without a request, keeps file managers from burning the budget.
pub fn is_probe_name(name: &str) -> bool {
    const EXACT: &[&str] = &[
        ".DS_Store",
        ".hidden",
        "autorun.inf",
        "AutoRun.inf",
        "Autorun.inf",
        ".xdg-volume-info",
        ".directory",
        "desktop.ini",
        "Desktop.ini",
        "Thumbs.db",
        "folder.jpg",
        "Folder.jpg",
        "cover.jpg",
        "Cover.jpg",
        "folder.png",
        "cover.png",
        ".localized",
        ".metadata_never_index",
        ".ql_disablethumbnails",
        ".Spotlight-V100",
        ".fseventsd",
        ".git",
        ".svn",
        ".hg",
        ".envrc",
        ".thumbnails",
        ".Trashes",
    ];
    EXACT.contains(&name) || name.starts_with("._") || name.starts_with(".Trash")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CallRecord, Party};

    fn record(inbound: bool, start: &str, from: Party, to: Party) -> CallRecord {
        CallRecord {
            id: "abc".into(),
            session_id: "1234567890".into(),
            telephony_session_id: None,
            start_time: start.parse().unwrap(),
            duration: 35,
            inbound,
            from,
            to,
            recordings: vec![],
            raw: Default::default(),
        }
    }

    fn party(number: Option<&str>, ext: Option<&str>, name: Option<&str>) -> Party {
        Party {
            phone_number: number.map(Into::into),
            extension_number: ext.map(Into::into),
            name: name.map(Into::into),
        }
    }

    #[test]
    fn seed_call_names() {
        let r = record(
            true,
            "2026-11-23T14:05:12Z",
            party(Some("+14155550100"), None, Some("John Smith")),
            party(Some("+16505550100"), None, Some("Jane Doe")),
        );
        let tz = TimeZone::UTC;
        assert_eq!(
            session_dir_name(&r, &tz),
            "14-05-12 in +14155550100 John Smith 1234567890"
        );
        assert_eq!(
            recording_file_name(&r, "44444444", AudioKind::Mp3, &tz),
            "2026-11-23 14-05-12 in +14155550100 John Smith 44444444.mp3"
        );
        assert_eq!(
            split_recording_name("2026-11-23 14-05-12 in x 44444444.mp3"),
            Some(("44444444", AudioKind::Mp3))
        );
        assert_eq!(
            split_recording_name("44444444.wav"),
            Some(("44444444", AudioKind::Wav))
        );
        assert_eq!(split_recording_name("44444444.ogg"), None);
    }

    #[test]
    fn outbound_names_the_callee_and_extensions() {
        let r = record(
            false,
            "2026-11-23T09:00:00Z",
            party(Some("+16505550100"), None, Some("Jane Doe")),
            party(None, Some("101"), None),
        );
        assert_eq!(
            session_dir_name(&r, &TimeZone::UTC),
            "09-00-00 out ext 101 1234567890"
        );
        let r = record(
            false,
            "2026-11-23T09:00:00Z",
            Party::default(),
            Party::default(),
        );
        assert_eq!(
            session_dir_name(&r, &TimeZone::UTC),
            "09-00-00 out unknown 1234567890"
        );
    }

    #[test]
    fn local_time_zone_moves_the_clock() {
        let r = record(
            true,
            "2026-11-24T07:59:00Z",
            party(Some("+1"), None, None),
            Party::default(),
        );
        let la = TimeZone::get("America/Los_Angeles").unwrap();
        assert_eq!(session_dir_name(&r, &la), "23-59-00 in +1 1234567890");
    }

    #[test]
    fn hostile_names_are_neutralised() {
        let name = "Evil/../..:\u{202e}gpj.exe\n\t\u{0}x";
        let r = record(
            true,
            "2026-11-23T14:05:12Z",
            party(Some("+1"), None, Some(name)),
            Party::default(),
        );
        let dir = session_dir_name(&r, &TimeZone::UTC);
        assert!(
            !dir.contains('/') && !dir.contains(':') && !dir.contains('\u{202e}'),
            "{dir}"
        );
        assert!(!dir.chars().any(char::is_control), "{dir}");
        assert!(dir.ends_with(" 1234567890"));
        // A name that is only dots cannot become `.` or `..`.
        assert_eq!(sanitize(".."), "");
        assert_eq!(sanitize("a  \u{200f} b"), "a b");
    }

    #[test]
    fn long_names_keep_the_id_and_fit() {
        let long = "Ω".repeat(300); // 600 bytes
        let r = record(
            true,
            "2026-11-23T14:05:12Z",
            party(Some("+1"), None, Some(&long)),
            Party::default(),
        );
        let dir = session_dir_name(&r, &TimeZone::UTC);
        assert!(dir.len() <= NAME_MAX, "{}", dir.len());
        assert!(dir.ends_with(" 1234567890"));
        let file = recording_file_name(&r, "44444444", AudioKind::Wav, &TimeZone::UTC);
        assert!(file.len() <= NAME_MAX);
        assert!(file.ends_with(" 44444444.wav"));
    }

    #[test]
    fn names_sort_chronologically() {
        let mk = |t: &str| {
            session_dir_name(
                &record(
                    true,
                    t,
                    party(Some("+9"), None, Some("Zed")),
                    Party::default(),
                ),
                &TimeZone::UTC,
            )
        };
        let (a, b, c) = (
            mk("2026-11-23T09:05:00Z"),
            mk("2026-11-23T10:00:00Z"),
            mk("2026-11-23T23:59:59Z"),
        );
        assert!(a < b && b < c);
    }

    #[test]
    fn probes_and_dates() {
        for p in [
            ".DS_Store",
            "._foo",
            ".Trash-0",
            ".Trash",
            ".hidden",
            "autorun.inf",
            ".xdg-volume-info",
        ] {
            assert!(is_probe_name(p), "{p}");
        }
        assert!(!is_probe_name("2026-11-23"));
        assert_eq!(
            parse_date_dir("2026-11-23"),
            Some(jiff::civil::date(2026, 11, 23))
        );
        assert_eq!(parse_date_dir("2026-11-3"), None);
        assert_eq!(parse_date_dir("2026-13-01"), None);
        assert_eq!(
            AudioKind::from_content_type("audio/x-wav"),
            Some(AudioKind::Wav)
        );
        assert_eq!(
            AudioKind::from_content_type("audio/mpeg; charset=x"),
            Some(AudioKind::Mp3)
        );
        assert_eq!(AudioKind::from_content_type("text/html"), None);
        assert!(!is_plausible_id("../etc"));
        assert!(is_plausible_id("44444444"));
    }
}
