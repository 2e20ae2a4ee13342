//! What a recording's own bytes say about where it ends.
//!
//! A body delimited by closing its connection (no `Content-Length`, no chunked framing) cannot
//! tell its end from a drop, and a host or proxy that cuts every such body at the same byte would
//! have a second answer "confirm" the cut. The two formats the media host serves carry evidence
//! of their own: a WAV file states its length in its RIFF header, and an MP3 file is a chain of
//! frames whose headers give their lengths, so a body that stops inside a frame was cut. Both
//! checks only ever turn an end into a drop (an error after the retries, never other bytes); no
//! evidence leaves the end to the usual confirmation.

/// The file length the RIFF header at the start of `head` states (its size field plus the 8
/// bytes before it), when `head` starts a WAV file whose writer filled that field in: streaming
/// writers leave 0, `u32::MAX` or another huge placeholder there (from 2 GiB on, more than a
/// call's recording), and those say nothing.
pub(super) fn wav_length(head: &[u8]) -> Option<u64> {
    if head.len() < 12 || &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return None;
    }
    let size = u32::from_le_bytes(head[4..8].try_into().ok()?);
    (36..0x7FFF_0000)
        .contains(&size)
        .then(|| u64::from(size) + 8)
}

/// Whether a WAV file whose header states `stated` bytes was cut when its body ended at `end`.
/// Strictly: a writer that left out the pad byte of an odd-sized last chunk (one byte short)
/// fails too, rather than a cut one byte before the end passing for the file.
pub(super) fn wav_cut(stated: u64, end: u64) -> bool {
    end < stated
}

/// How many bytes before an end [`ends_inside_an_mpeg_frame`] wants: room for a few of the
/// largest frames (Layer II at 384 kbps and 32 kHz is 1,729 bytes). As many as a body keeps of
/// what it skipped ([`crate::api::Skipped`]).
pub(super) const MPEG_TAIL: usize = crate::api::SKIPPED_TAIL;

/// Frames that must follow one another exactly before the chain is believed: a frame sync
/// (11 set bits) occurs by chance in audio data, three chained headers do not.
const CHAIN: usize = 3;

/// The length of the MPEG audio frame whose header starts `h`, and the header bits every frame
/// of one stream shares (version, layer, sample rate), or `None` when `h` starts no valid header.
/// Free-format frames (bitrate index 0) state no length, so they are not headers here.
fn mpeg_frame(h: &[u8]) -> Option<(usize, u16)> {
    if h.len() < 4 || h[0] != 0xFF || h[1] & 0xE0 != 0xE0 {
        return None;
    }
    // Version: 0 is MPEG 2.5, 2 MPEG 2, 3 MPEG 1 (1 is reserved). Layer: 1 is III, 2 II, 3 I.
    let version = usize::from((h[1] >> 3) & 3);
    let layer = (h[1] >> 1) & 3;
    let bitrate_index = usize::from(h[2] >> 4);
    let rate_index = usize::from((h[2] >> 2) & 3);
    if version == 1 || layer == 0 || bitrate_index == 0 || bitrate_index == 15 || rate_index == 3 {
        return None;
    }
    // Emphasis 2 is reserved.
    if h[3] & 3 == 2 {
        return None;
    }
    const RATES: [[u32; 3]; 4] = [
        [11025, 12000, 8000],
        [0, 0, 0],
        [22050, 24000, 16000],
        [44100, 48000, 32000],
    ];
    const KBPS_V1_L1: [u32; 15] = [
        0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448,
    ];
    const KBPS_V1_L2: [u32; 15] = [
        0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
    ];
    const KBPS_V1_L3: [u32; 15] = [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ];
    const KBPS_V2_L1: [u32; 15] = [
        0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256,
    ];
    const KBPS_V2_L23: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let mpeg1 = version == 3;
    let kbps = match (mpeg1, layer) {
        (true, 3) => KBPS_V1_L1,
        (true, 2) => KBPS_V1_L2,
        (true, _) => KBPS_V1_L3,
        (false, 3) => KBPS_V2_L1,
        (false, _) => KBPS_V2_L23,
    }[bitrate_index];
    let rate = RATES[version][rate_index];
    let padding = u32::from((h[2] >> 1) & 1);
    let bits_per_sec = kbps * 1000;
    let len = match layer {
        // Layer I: slots of 4 bytes, 384 samples.
        3 => (12 * bits_per_sec / rate + padding) * 4,
        // Layer II, and Layer III of MPEG 1: 1,152 samples.
        2 => 144 * bits_per_sec / rate + padding,
        _ if mpeg1 => 144 * bits_per_sec / rate + padding,
        // Layer III of MPEG 2 and 2.5: 576 samples.
        _ => 72 * bits_per_sec / rate + padding,
    };
    let shared = (u16::from(h[1] & 0x1E) << 8) | u16::from(h[2] & 0x0C);
    Some((len as usize, shared))
}

/// Whether `tail`, the last bytes of a body, ends inside an MPEG audio frame: a chain of at
/// least [`CHAIN`] frames, each header where the one before it said it ends, runs into a header
/// whose frame goes past the end, into the first bytes of a header (fewer than 4 arrived), or
/// into an ID3v1 tag shorter than its 128 bytes.
///
/// A chain that lands exactly on the end, or on a whole ID3v1 tag, is a whole file; so is any
/// tail that ends with a tag written after the audio (ID3v1, an APE tag's footer, Lyrics3),
/// whatever the frames before it look like (a short last frame is the encoder's, not a cut).
/// Anything else (no chain, a chain that stops at data that is no frame header) says nothing.
pub(super) fn ends_inside_an_mpeg_frame(tail: &[u8]) -> bool {
    if ends_with_a_tag(tail) {
        return false;
    }
    for start in 0..tail.len() {
        let Some((_, shared)) = mpeg_frame(&tail[start..]) else {
            continue;
        };
        let mut at = start;
        let mut chained = 0;
        loop {
            let rest = &tail[at..];
            if rest.is_empty() {
                if chained >= CHAIN {
                    return false;
                }
                // A stray sync whose "frame" happened to end at the end: look further.
                break;
            }
            match mpeg_frame(rest) {
                Some((len, s)) if s == shared => {
                    if len > rest.len() {
                        // The frame goes past the end: believed only after a chain.
                        if chained >= CHAIN {
                            return true;
                        }
                        break;
                    }
                    chained += 1;
                    at += len;
                }
                _ if chained >= CHAIN => return a_cut_header_or_tag(rest, &tail[start..]),
                _ => break,
            }
        }
    }
    false
}

/// Whether `tail` ends with a tag that writers put after the audio: ID3v1 (`TAG` 128 bytes
/// before the end), an APE tag's 32-byte footer (`APETAGEX`), Lyrics3 (`LYRICS200`/`LYRICSEND`
/// before an ID3v1 tag or at the end).
fn ends_with_a_tag(tail: &[u8]) -> bool {
    let at = |back: usize, what: &[u8]| {
        tail.len() >= back && tail[tail.len() - back..].starts_with(what)
    };
    at(128, b"TAG")
        || at(32, b"APETAGEX")
        || tail.ends_with(b"LYRICS200")
        || tail.ends_with(b"LYRICSEND")
}

/// After a chain of frames, whether `rest` (what follows the last whole frame, to the end) is
/// the start of something cut: 1 to 3 bytes of a header of the same stream (`first` starts with
/// one), or of an ID3v1 tag shorter than its 128 bytes. One byte is little evidence, but a
/// whole file that ends in a stray 0xFF or `T` after its last frame is rarer than a cut one byte
/// into a header, and the error is the safe side: the file fails near its end instead of
/// passing for shorter.
fn a_cut_header_or_tag(rest: &[u8], first: &[u8]) -> bool {
    if rest.len() < 4 {
        let like_first = rest
            .iter()
            .zip(first)
            .enumerate()
            .all(|(i, (r, f))| match i {
                0 => *r == 0xFF,
                1 => r & 0xFE == f & 0xFE,
                _ => r & 0x0C == f & 0x0C,
            });
        return like_first || b"TAG".starts_with(rest);
    }
    rest.len() < 128 && rest.starts_with(b"TAG")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An MPEG-1 Layer III header at 128 kbps and 44.1 kHz (frames of 417 bytes, 418 padded).
    fn header(padded: bool) -> [u8; 4] {
        [0xFF, 0xFB, 0x90 | if padded { 0x02 } else { 0 }, 0x64]
    }

    /// `n` frames, every third padded, their bodies a pattern that holds no frame sync.
    fn frames(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let padded = i % 3 == 2;
            let h = header(padded);
            let (len, _) = mpeg_frame(&h).unwrap();
            out.extend_from_slice(&h);
            out.extend((4..len).map(|j| (j % 200) as u8));
        }
        out
    }

    #[test]
    fn frame_lengths_follow_the_standard_tables() {
        assert_eq!(mpeg_frame(&header(false)).map(|f| f.0), Some(417));
        assert_eq!(mpeg_frame(&header(true)).map(|f| f.0), Some(418));
        // The emulator's frames: MPEG-1 Layer III, 32 kbps, 32 kHz.
        assert_eq!(
            mpeg_frame(&[0xFF, 0xFB, 0x18, 0xC4]).map(|f| f.0),
            Some(144)
        );
        // MPEG-2 Layer III, 64 kbps, 22.05 kHz: 72 * 64000 / 22050 = 208.
        assert_eq!(
            mpeg_frame(&[0xFF, 0xF3, 0x80, 0xC4]).map(|f| f.0),
            Some(208)
        );
        // MPEG-1 Layer II, 384 kbps, 32 kHz: the largest frame.
        assert_eq!(
            mpeg_frame(&[0xFF, 0xFD, 0xE8, 0xC4]).map(|f| f.0),
            Some(1728)
        );
        // Layer I, 32 kbps, 44.1 kHz: (12 * 32000 / 44100) * 4 = 32.
        assert_eq!(mpeg_frame(&[0xFF, 0xFF, 0x10, 0xC4]).map(|f| f.0), Some(32));
        for bad in [
            [0xFF, 0xFB, 0x00, 0x64], // free format
            [0xFF, 0xFB, 0xF0, 0x64], // bitrate index 15
            [0xFF, 0xFB, 0x9C, 0x64], // sample rate index 3
            [0xFF, 0xEB, 0x90, 0x64], // version 1 (reserved)
            [0xFF, 0xF9, 0x90, 0x64], // layer 0 (reserved)
            [0xFF, 0xFB, 0x90, 0x66], // emphasis 2 (reserved)
            [0xFE, 0xFB, 0x90, 0x64], // no sync
        ] {
            assert_eq!(mpeg_frame(&bad), None, "{bad:02x?}");
        }
    }

    #[test]
    fn a_body_cut_inside_a_frame_is_told_from_a_whole_file() {
        let whole = frames(40);
        assert!(!ends_inside_an_mpeg_frame(&whole), "whole");
        // Every cut that is not at a frame boundary, seen through tails of several lengths.
        let mut boundaries = vec![0];
        let mut at = 0;
        while at < whole.len() {
            at += mpeg_frame(&whole[at..]).unwrap().0;
            boundaries.push(at);
        }
        for cut in 4 * 418..whole.len() {
            for tail_len in [MPEG_TAIL, 4 * 418 + 3, 2000] {
                let tail = &whole[cut.saturating_sub(tail_len)..cut];
                let inside = ends_inside_an_mpeg_frame(tail);
                if boundaries.contains(&cut) {
                    assert!(!inside, "cut at {cut} (tail {tail_len})");
                } else {
                    // Inside a frame's body, or inside its header.
                    assert!(inside, "cut at {cut} (tail {tail_len})");
                }
            }
        }
    }

    #[test]
    fn a_tag_after_the_audio_is_a_whole_file_and_a_cut_one_is_a_cut() {
        let mut short_last = frames(10);
        short_last.truncate(short_last.len() - 100); // the encoder's short last frame
        for tag in [&b"TAG"[..], b"APETAGEX"] {
            let mut f = short_last.clone();
            let size = if tag == b"TAG" { 128 } else { 32 };
            f.extend_from_slice(tag);
            f.extend(std::iter::repeat_n(b' ', size - tag.len()));
            assert!(
                !ends_inside_an_mpeg_frame(&f),
                "{:?}",
                String::from_utf8_lossy(tag)
            );
        }
        let mut lyrics = short_last.clone();
        lyrics.extend_from_slice(b"LYRICSBEGINxyzLYRICS200");
        assert!(!ends_inside_an_mpeg_frame(&lyrics));
        // An ID3v1 tag cut short after whole frames: a cut, from its first byte on.
        for cut in [&b"T"[..], b"TA", b"TAG", b"TAGtitle"] {
            let mut cut_tag = frames(10);
            cut_tag.extend_from_slice(cut);
            assert!(ends_inside_an_mpeg_frame(&cut_tag), "{cut:?}");
        }
        // Bytes after the last frame that start neither a header nor a tag: no verdict.
        for stray in [&[0u8][..], &[0, 0, 0], &[0xFF, 0xFF], b"xyz"] {
            let mut f = frames(10);
            f.extend_from_slice(stray);
            assert!(!ends_inside_an_mpeg_frame(&f), "{stray:02x?}");
        }
        // The same short last frame without a tag: a cut, as far as the frames tell.
        assert!(ends_inside_an_mpeg_frame(&short_last));
    }

    #[test]
    fn tags_and_other_data_say_nothing() {
        let mut tagged = frames(10);
        tagged.extend_from_slice(b"TAG");
        tagged.extend(std::iter::repeat_n(b' ', 125));
        assert!(!ends_inside_an_mpeg_frame(&tagged), "ID3v1 at the end");
        let mut ape = frames(10);
        ape.extend_from_slice(b"APETAGEX");
        ape.extend(std::iter::repeat_n(0u8, 24));
        assert!(!ends_inside_an_mpeg_frame(&ape), "APE tag");
        // Too short a chain before the cut: no evidence.
        let two = frames(3);
        assert!(!ends_inside_an_mpeg_frame(&two[..2 * 417 + 100]));
        // Bytes with no frame in them (a WAV's samples, say), and a stray sync among them.
        let noise: Vec<u8> = (0..MPEG_TAIL).map(|i| (i * 7 % 251) as u8).collect();
        assert!(!ends_inside_an_mpeg_frame(&noise));
        let mut stray = noise.clone();
        stray[MPEG_TAIL - 100..MPEG_TAIL - 96].copy_from_slice(&header(false));
        assert!(!ends_inside_an_mpeg_frame(&stray));
        assert!(!ends_inside_an_mpeg_frame(&[]));
        // A stream whose header bits change (another stream spliced on): the chain stops.
        let mut spliced = frames(5);
        let other = [0xFF, 0xFB, 0x18, 0xC4];
        spliced.extend_from_slice(&other);
        spliced.extend(std::iter::repeat_n(0u8, 50));
        assert!(!ends_inside_an_mpeg_frame(&spliced));
    }

    #[test]
    fn the_length_a_wav_header_states() {
        fn wav(len: usize, size: u32) -> Vec<u8> {
            let mut v = vec![0u8; len];
            v[0..4].copy_from_slice(b"RIFF");
            v[4..8].copy_from_slice(&size.to_le_bytes());
            if len >= 12 {
                v[8..12].copy_from_slice(b"WAVE");
            }
            v
        }
        assert_eq!(wav_length(&wav(44, 36)), Some(44));
        assert_eq!(wav_length(&wav(100, 1_000_036)), Some(1_000_044));
        assert_eq!(wav_length(&wav(44, u32::MAX)), None, "streaming writer");
        assert_eq!(wav_length(&wav(44, 0)), None, "streaming writer");
        assert_eq!(wav_length(&wav(44, 20)), None, "shorter than a header");
        assert_eq!(wav_length(b"RIFF\x24\0\0\0WAV"), None, "too short to tell");
        assert_eq!(wav_length(b"ID3\x04\0\0\0\0\0\0\0\0\0\0"), None, "an MP3");
        assert_eq!(wav_length(&wav(44, 0x7FFF_FFFF)), None, "a placeholder");
        assert_eq!(wav_length(&wav(44, 0x7FFE_0000)), Some(0x7FFE_0008));
        assert!(wav_cut(1000, 999));
        assert!(!wav_cut(1000, 1000));
    }
}

/// Files real encoders write (when `ffmpeg` is installed: `.ci/run` installs it): each whole
/// file ends where its frames do (no evidence of a cut), and a cut inside any of its last
/// frames is told.
#[cfg(test)]
mod encoders {
    use super::*;

    fn encode(args: &[&str]) -> Option<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a.mp3");
        let st = std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
            .arg("sine=frequency=440:duration=7")
            .args(args)
            .arg(&out)
            .status()
            .ok()?;
        st.success().then(|| std::fs::read(&out).unwrap())
    }

    #[test]
    fn files_real_encoders_write_end_on_a_frame_and_cuts_inside_one_are_told() {
        let cases: &[&[&str]] = &[
            &[
                "-c:a",
                "libmp3lame",
                "-b:a",
                "32k",
                "-ar",
                "8000",
                "-ac",
                "1",
            ],
            &[
                "-c:a",
                "libmp3lame",
                "-b:a",
                "128k",
                "-ar",
                "44100",
                "-ac",
                "2",
            ],
            &["-c:a", "libmp3lame", "-q:a", "4"],
            &["-c:a", "libmp3lame", "-b:a", "64k", "-write_id3v1", "1"],
            &[
                "-c:a",
                "libmp3lame",
                "-b:a",
                "48k",
                "-write_xing",
                "0",
                "-id3v2_version",
                "0",
            ],
            &["-c:a", "libshine", "-b:a", "64k", "-ar", "32000"],
        ];
        let mut checked = 0;
        for args in cases {
            let Some(file) = encode(args) else {
                eprintln!("no ffmpeg (or no encoder for {args:?}): skipped");
                continue;
            };
            checked += 1;
            let tail = |end: usize| &file[end.saturating_sub(MPEG_TAIL)..end];
            assert!(
                !ends_inside_an_mpeg_frame(tail(file.len())),
                "{args:?}: whole"
            );
            // The last frames' boundaries, walked from a chain in the tail.
            let id3v1 = file.len() >= 128 && file[file.len() - 128..].starts_with(b"TAG");
            let audio_end = file.len() - if id3v1 { 128 } else { 0 };
            let mut starts = Vec::new();
            let mut at = audio_end.saturating_sub(MPEG_TAIL);
            while at < audio_end {
                match mpeg_frame(&file[at..]) {
                    Some((len, _)) if at + len <= audio_end => {
                        let next = at + len;
                        if next == audio_end || mpeg_frame(&file[next..]).is_some() {
                            starts.push(at);
                            at = next;
                            continue;
                        }
                        at += 1;
                    }
                    _ => at += 1,
                }
            }
            assert!(starts.len() > 4, "{args:?}: frames found");
            let mut told = 0;
            for w in starts.windows(2).rev().take(3) {
                // Every cut inside the frame, past its 4-byte header.
                for cut in w[0] + 4..w[1] {
                    assert!(
                        ends_inside_an_mpeg_frame(tail(cut)),
                        "{args:?}: a cut at {cut} inside the frame at {}",
                        w[0]
                    );
                    told += 1;
                }
            }
            eprintln!("[format] {args:?}: {} bytes, {told} cuts told", file.len());
        }
        eprintln!("[format] {checked} encoders checked");
    }
}
