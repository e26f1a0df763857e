//! Searching text and records for key bytes: every 16-byte window of every key, in the raw
//! bytes and in whatever base64 or hex the haystack holds (a record stores binary fields as
//! base64 strings; a log might print hex).

use std::collections::HashSet;

use base64::Engine as _;

/// The needle set: every 16-byte window of every key (80-byte key files, names included).
#[derive(Debug, Default)]
pub struct KeyWindows {
    windows: HashSet<[u8; 16]>,
    keys: usize,
}

impl KeyWindows {
    /// Windows of every key in `keys`.
    pub fn of<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut out = Self::default();
        for k in keys {
            out.keys += 1;
            for w in k.windows(16) {
                out.windows.insert(w.try_into().expect("16-byte window"));
            }
        }
        out
    }

    /// How many keys the set was built from.
    pub fn keys(&self) -> usize {
        self.keys
    }

    /// Where in `haystack` a window of a key appears: `Some(description)` on a find.
    pub fn find(&self, haystack: &[u8]) -> Option<String> {
        if let Some(at) = self.find_raw(haystack) {
            return Some(format!("raw key bytes at offset {at}"));
        }
        for (encoding, decoded) in decodings(haystack) {
            if self.find_raw(&decoded).is_some() {
                return Some(format!("key bytes in {encoding}"));
            }
        }
        None
    }

    fn find_raw(&self, bytes: &[u8]) -> Option<usize> {
        bytes.windows(16).position(|w| {
            self.windows
                .contains(<&[u8; 16]>::try_from(w).expect("16-byte window"))
        })
    }
}

/// Every maximal run of base64 or hex characters long enough to hold 16 bytes, decoded.
fn decodings(haystack: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let b64 = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'-' | b'_');
    let mut out = Vec::new();
    for run in haystack.split(|c| !b64(*c)).filter(|r| r.len() >= 22) {
        // A run may start mid-way in a base64 string only if the haystack is odd; try the four
        // alignments so a 16-byte window is found wherever it starts.
        for skip in 0..4 {
            let mut text: Vec<u8> = run[skip..].to_vec();
            if text.len() % 4 == 1 {
                text.pop();
            }
            for alphabet in [&base64::alphabet::STANDARD, &base64::alphabet::URL_SAFE] {
                let lenient = base64::engine::GeneralPurposeConfig::new()
                    .with_decode_allow_trailing_bits(true)
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent);
                let engine = base64::engine::GeneralPurpose::new(alphabet, lenient);
                if let Ok(d) = engine.decode(&text) {
                    out.push(("base64", d));
                }
            }
        }
        if run.len() >= 32 && run.iter().all(u8::is_ascii_hexdigit) {
            for skip in 0..2 {
                let d: Vec<u8> = run[skip..]
                    .chunks_exact(2)
                    .filter_map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
                    .collect();
                out.push(("hex", d));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Vec<u8> {
        (0..80u8).map(|i| i.wrapping_mul(7) ^ n).collect()
    }

    #[test]
    fn finds_a_key_window_raw_in_base64_and_in_hex_wherever_it_starts() {
        let k = key(1);
        let needles = KeyWindows::of([k.as_slice()]);
        assert_eq!(needles.keys(), 1);
        let b64 = base64::engine::general_purpose::STANDARD;
        for start in [0usize, 1, 2, 3, 30, 64] {
            let part = &k[start..start + 16];
            let mut raw = b"prefix".to_vec();
            raw.extend_from_slice(part);
            assert!(needles.find(&raw).is_some(), "raw from {start}");
            let json = format!("{{\"aes\":\"{}\"}}", b64.encode(part));
            assert!(
                needles.find(json.as_bytes()).is_some(),
                "base64 from {start}"
            );
            let hex: String = part.iter().map(|b| format!("{b:02x}")).collect();
            assert!(
                needles.find(format!("x={hex} ").as_bytes()).is_some(),
                "hex from {start}"
            );
        }
        // A longer base64 string that holds the key somewhere inside.
        let mut blob = vec![9u8; 5];
        blob.extend_from_slice(&k);
        let json = format!("{{\"v\":\"{}\"}}", b64.encode(&blob));
        assert!(needles.find(json.as_bytes()).is_some());
    }

    #[test]
    fn other_bytes_and_short_fragments_are_not_reported() {
        let needles = KeyWindows::of([key(1).as_slice()]);
        assert!(needles.find(&key(2)).is_none());
        assert!(needles.find(&key(1)[..15]).is_none());
        let b64 = base64::engine::general_purpose::STANDARD.encode(&key(1)[..15]);
        assert!(needles.find(b64.as_bytes()).is_none());
    }
}
