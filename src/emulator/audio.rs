//! Recording audio, generated on demand from `(key, offset)`.
//!
//! The emulator must serve 100,000 recordings of up to an hour without storing any of them, at
//! loopback speed, and every byte must be reproducible (tests compare what a client downloaded with
//! [`AudioSpec::fill`]). So each recording is a pure function of a 64-bit key and its duration:
//!
//! - **MP3**: a run of MPEG-1 Layer III mono frames at 32 kHz / 32 kbps, 144 bytes each, no padding,
//!   no CRC. Header `FF FB 18 C4`, then 17 bytes of side information that are all zero (so
//!   `main_data_begin = 0`, `part2_3_length = 0`: every granule decodes to silence), then 123 bytes
//!   the decoder treats as ancillary data. Those 123 bytes are seeded pseudo-random noise so that every
//!   recording's bytes are unique; the first frame's are zero so no decoder takes it for a Xing/Info
//!   tag. `ceil(duration * 32000 / 1152)` frames, so decoders report the record's duration.
//! - **WAV**: the 44-byte RIFF header, then 8 kHz 16-bit mono PCM: a per-recording tone (a period of
//!   `P` samples, looked up in a small table) plus hash noise computed from the sample index (one
//!   64-bit hash gives the noise of four samples).
//!
//! Any byte range can be produced independently (Range requests, resumed downloads), and
//! [`AudioSpec::fill`] works on whole output blocks without per-byte allocation.

/// Size of one MPEG-1 Layer III frame at 32 kbps / 32 kHz without padding.
pub(crate) const MP3_FRAME_LEN: u64 = 144;
const MP3_HEADER: [u8; 4] = [0xFF, 0xFB, 0x18, 0xC4];
/// Header plus 17 bytes of zero side information; the rest of a frame is ancillary data.
const MP3_ANCILLARY_START: usize = 4 + 17;
const MP3_SAMPLES_PER_FRAME: u64 = 1152;
const MP3_SAMPLE_RATE: u64 = 32_000;

/// WAV: 8 kHz, 16-bit, mono.
pub(crate) const WAV_HEADER_LEN: u64 = 44;
const WAV_SAMPLE_RATE: u32 = 8_000;
const WAV_BYTES_PER_SEC: u64 = WAV_SAMPLE_RATE as u64 * 2;

/// Container and codec of one recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Codec {
    Mp3,
    Wav,
}

impl Codec {
    /// The file extension of this format.
    pub(crate) fn extension(self) -> &'static str {
        match self {
            Codec::Mp3 => "mp3",
            Codec::Wav => "wav",
        }
    }

    /// The content type the current service sends (see `quirks::content_type` for `audio/x-wav`).
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Codec::Mp3 => "audio/mpeg",
            Codec::Wav => "audio/wav",
        }
    }
}

/// Everything needed to produce the bytes of one recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AudioSpec {
    pub codec: Codec,
    /// Mixed from the data-set seed and the recording id; selects the noise and the tone.
    pub key: u64,
    /// Length of the audio in whole seconds (the call record's `duration`).
    pub duration_s: u32,
}

/// SplitMix64 finaliser: a cheap, well-mixed 64-bit hash.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The noise of one WAV sample: 10 bits of lane `lane` (0..4) of a 64-bit hash word, centred.
#[inline]
fn wav_noise(word: u64, lane: u64) -> i32 {
    ((word >> (16 * lane + 6)) & 0x3FF) as i32 - 512
}

impl AudioSpec {
    /// The hash word that holds the noise of WAV samples `4q .. 4q + 4`.
    #[inline]
    fn noise_word(&self, q: u64) -> u64 {
        mix64(self.key ^ q.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Number of MP3 frames for the duration.
    fn mp3_frames(&self) -> u64 {
        (u64::from(self.duration_s) * MP3_SAMPLE_RATE).div_ceil(MP3_SAMPLES_PER_FRAME)
    }

    /// Total size in bytes of the file.
    pub fn len(&self) -> u64 {
        match self.codec {
            Codec::Mp3 => self.mp3_frames() * MP3_FRAME_LEN,
            Codec::Wav => WAV_HEADER_LEN + u64::from(self.duration_s) * WAV_BYTES_PER_SEC,
        }
    }

    /// Writes the bytes `offset .. offset + buf.len()` of the file into `buf`.
    ///
    /// # Panics
    /// If the range extends past [`AudioSpec::len`].
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        assert!(
            offset + buf.len() as u64 <= self.len(),
            "audio range out of bounds"
        );
        match self.codec {
            Codec::Mp3 => self.fill_mp3(offset, buf),
            Codec::Wav => self.fill_wav(offset, buf),
        }
    }

    /// The whole file (tests and ground truth only; the server streams with [`AudioSpec::fill`]).
    pub fn to_vec(self) -> Vec<u8> {
        let mut v = vec![0u8; self.len() as usize];
        self.fill(0, &mut v);
        v
    }

    fn mp3_frame(&self, index: u64, frame: &mut [u8; MP3_FRAME_LEN as usize]) {
        frame.fill(0);
        frame[..4].copy_from_slice(&MP3_HEADER);
        if index == 0 {
            return;
        }
        let base = mix64(self.key ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let anc = &mut frame[MP3_ANCILLARY_START..];
        for (i, chunk) in anc.chunks_mut(8).enumerate() {
            let word = mix64(base.wrapping_add(i as u64)).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    fn fill_mp3(&self, offset: u64, buf: &mut [u8]) {
        let mut frame = [0u8; MP3_FRAME_LEN as usize];
        let mut pos = offset;
        let mut out = 0usize;
        while out < buf.len() {
            let index = pos / MP3_FRAME_LEN;
            let within = (pos % MP3_FRAME_LEN) as usize;
            self.mp3_frame(index, &mut frame);
            let n = (frame.len() - within).min(buf.len() - out);
            buf[out..out + n].copy_from_slice(&frame[within..within + n]);
            out += n;
            pos += n as u64;
        }
    }

    fn wav_header(&self) -> [u8; WAV_HEADER_LEN as usize] {
        let data_len = (u64::from(self.duration_s) * WAV_BYTES_PER_SEC) as u32;
        let mut h = [0u8; WAV_HEADER_LEN as usize];
        h[0..4].copy_from_slice(b"RIFF");
        h[4..8].copy_from_slice(&(36 + data_len).to_le_bytes());
        h[8..12].copy_from_slice(b"WAVE");
        h[12..16].copy_from_slice(b"fmt ");
        h[16..20].copy_from_slice(&16u32.to_le_bytes());
        h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
        h[22..24].copy_from_slice(&1u16.to_le_bytes()); // mono
        h[24..28].copy_from_slice(&WAV_SAMPLE_RATE.to_le_bytes());
        h[28..32].copy_from_slice(&(WAV_SAMPLE_RATE * 2).to_le_bytes());
        h[32..34].copy_from_slice(&2u16.to_le_bytes()); // block align
        h[34..36].copy_from_slice(&16u16.to_le_bytes()); // bits per sample
        h[36..40].copy_from_slice(b"data");
        h[40..44].copy_from_slice(&data_len.to_le_bytes());
        h
    }

    fn fill_wav(&self, offset: u64, buf: &mut [u8]) {
        let mut pos = offset;
        let mut out = 0usize;
        if pos < WAV_HEADER_LEN {
            let header = self.wav_header();
            let n = ((WAV_HEADER_LEN - pos) as usize).min(buf.len());
            buf[..n].copy_from_slice(&header[pos as usize..pos as usize + n]);
            out = n;
            pos += n as u64;
        }
        if out == buf.len() {
            return;
        }
        // Tone: one period of `period` samples (200..500 Hz at 8 kHz), amplitude ~0.2 full scale.
        let period = 16 + (self.key % 25) as usize;
        let mut table = [0i32; 40];
        for (i, t) in table.iter_mut().enumerate().take(period) {
            let phase = i as f64 / period as f64 * std::f64::consts::TAU;
            *t = (phase.sin() * 6000.0) as i32;
        }
        let sample = |s: u64| -> [u8; 2] {
            let v = table[(s % period as u64) as usize] + wav_noise(self.noise_word(s / 4), s % 4);
            (v as i16).to_le_bytes()
        };
        // A leading odd byte (the high half of a sample).
        let mut s = (pos - WAV_HEADER_LEN) / 2;
        if (pos - WAV_HEADER_LEN) % 2 == 1 {
            buf[out] = sample(s)[1];
            out += 1;
            s += 1;
        }
        // Single samples up to a group of four (one hash word each)...
        while s % 4 != 0 && buf.len() - out >= 2 {
            buf[out..out + 2].copy_from_slice(&sample(s));
            out += 2;
            s += 1;
        }
        // ...then the hot loop of WAV serving, which must keep up with a loopback client (1 GB/s
        // and more): four samples per hash word, stored as one 8-byte write, the tone read from a
        // table extended by four entries so the group needs no wrap (the same values as `sample`,
        // without its 64-bit `s % period` per sample, which would cost most of the time).
        let mut wide = [0i32; 44];
        for (i, t) in wide.iter_mut().enumerate().take(period + 4) {
            *t = table[i % period];
        }
        let mut phase = (s % period as u64) as usize;
        let mut groups = buf[out..].chunks_exact_mut(8);
        for group in &mut groups {
            let word = self.noise_word(s / 4);
            let t = &wide[phase..phase + 4];
            let mut packed = 0u64;
            for (lane, &tone) in t.iter().enumerate() {
                let v = (tone + wav_noise(word, lane as u64)) as i16 as u16;
                packed |= u64::from(v) << (16 * lane);
            }
            group.copy_from_slice(&packed.to_le_bytes());
            s += 4;
            phase += 4;
            if phase >= period {
                phase -= period;
            }
        }
        // The tail: whole samples, then a last odd byte (the low half of a sample).
        let tail = groups.into_remainder();
        let mut pairs = tail.chunks_exact_mut(2);
        for pair in &mut pairs {
            pair.copy_from_slice(&sample(s));
            s += 1;
        }
        if let [last] = pairs.into_remainder() {
            *last = sample(s)[0];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<AudioSpec> {
        vec![
            AudioSpec {
                codec: Codec::Mp3,
                key: 7,
                duration_s: 35,
            },
            AudioSpec {
                codec: Codec::Wav,
                key: 9,
                duration_s: 3,
            },
        ]
    }

    #[test]
    fn lengths_follow_duration() {
        let mp3 = AudioSpec {
            codec: Codec::Mp3,
            key: 1,
            duration_s: 36,
        };
        assert_eq!(mp3.len(), 1000 * 144); // 36 s * 32000 / 1152 = 1000 frames
        let wav = AudioSpec {
            codec: Codec::Wav,
            key: 1,
            duration_s: 2,
        };
        assert_eq!(wav.len(), 44 + 32_000);
    }

    #[test]
    fn any_range_matches_the_whole_file() {
        for spec in specs() {
            let whole = spec.to_vec();
            for (start, len) in [
                (0usize, 1usize),
                (1, 300),
                (43, 3),
                (45, 2),
                (143, 146),
                (1000, 4097),
            ] {
                let mut part = vec![0u8; len];
                spec.fill(start as u64, &mut part);
                assert_eq!(part, whole[start..start + len], "{spec:?} at {start}+{len}");
            }
        }
    }

    #[test]
    fn wav_samples_follow_the_formula() {
        // The reference the fast loop of `fill_wav` must keep to: tone table + hash noise.
        for key in [9u64, 10, 33] {
            let spec = AudioSpec {
                codec: Codec::Wav,
                key,
                duration_s: 2,
            };
            let bytes = spec.to_vec();
            let period = 16 + (key % 25) as usize;
            for s in [0u64, 1, 2, period as u64 - 1, period as u64, 7919, 15_999] {
                let tone = ((s % period as u64) as f64 / period as f64 * std::f64::consts::TAU)
                    .sin()
                    * 6000.0;
                let word = mix64(key ^ (s / 4).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let noise = ((word >> (16 * (s % 4) + 6)) & 0x3FF) as i32 - 512;
                let want = ((tone as i32 + noise) as i16).to_le_bytes();
                let at = (WAV_HEADER_LEN + 2 * s) as usize;
                assert_eq!(bytes[at..at + 2], want, "key {key} sample {s}");
            }
        }
    }

    #[test]
    fn recordings_differ_and_frames_are_well_formed() {
        let a = AudioSpec {
            codec: Codec::Mp3,
            key: 1,
            duration_s: 10,
        }
        .to_vec();
        let b = AudioSpec {
            codec: Codec::Mp3,
            key: 2,
            duration_s: 10,
        }
        .to_vec();
        assert_ne!(a, b);
        for frame in a.chunks(144) {
            assert_eq!(frame[..4], MP3_HEADER);
            assert!(frame[4..21].iter().all(|&x| x == 0));
        }
        assert!(
            a[21..144].iter().all(|&x| x == 0),
            "first frame's ancillary data is zero"
        );
    }
}

/// Rendered blocks of recordings, shared by every response that sends them.
///
/// Rendering is the emulator's main cost (a WAV block is a hash per four samples): without
/// this, each download of a recording renders it again, so a benchmark that downloads the
/// same file with curl and through a mount measures the emulator's CPU as much as the client's.
/// Blocks are [`RenderCache::BLOCK`] bytes at fixed offsets (`i * BLOCK`), rendered once and sent
/// as `Bytes` slices (no copy); the oldest are dropped past `budget` bytes, so memory stays
/// bounded with any number of recordings. The bytes are exactly [`AudioSpec::fill`]'s.
pub(crate) struct RenderCache {
    budget: u64,
    inner: std::sync::Mutex<RenderInner>,
}

#[derive(Default)]
struct RenderInner {
    blocks: std::collections::HashMap<(AudioSpec, u64), bytes::Bytes>,
    /// Insertion order, for eviction (oldest first).
    order: std::collections::VecDeque<(AudioSpec, u64)>,
    bytes: u64,
}

impl std::hash::Hash for AudioSpec {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (self.codec as u8, self.key, self.duration_s).hash(h);
    }
}

impl RenderCache {
    /// Bytes per block: one body chunk of a media response.
    pub(crate) const BLOCK: u64 = 256 * 1024;

    pub(crate) fn new(budget: u64) -> RenderCache {
        RenderCache {
            budget,
            inner: Default::default(),
        }
    }

    /// Block `index` of `audio` (shorter at the end of the file), rendered if not cached.
    pub(crate) fn block(&self, audio: AudioSpec, index: u64) -> bytes::Bytes {
        let key = (audio, index);
        if let Some(b) = self.lock().blocks.get(&key) {
            return b.clone();
        }
        let start = index * Self::BLOCK;
        let len = (audio.len().saturating_sub(start)).min(Self::BLOCK) as usize;
        let mut buf = vec![0u8; len];
        audio.fill(start, &mut buf);
        let block = bytes::Bytes::from(buf);
        let mut g = self.lock();
        if self.budget >= len as u64 && g.blocks.insert(key, block.clone()).is_none() {
            g.order.push_back(key);
            g.bytes += len as u64;
            while g.bytes > self.budget {
                let Some(old) = g.order.pop_front() else {
                    break;
                };
                if let Some(b) = g.blocks.remove(&old) {
                    g.bytes -= b.len() as u64;
                }
            }
        }
        block
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RenderInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
