//! Fixed-length lowercase or uppercase hex, as the ids and digests in the store's records are
//! written (fingerprints, ring digests, public key ids, write ids).

/// Parses exactly `2 * N` hex digits into `N` bytes; anything else (another length, a sign,
/// a space, a non-ASCII character) is `None`.
pub fn parse<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let value = |d: u8| match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        _ => d - b'A' + 10,
    };
    let mut out = [0u8; N];
    for (b, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *b = value(pair[0]) << 4 | value(pair[1]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_digits_of_its_length_and_nothing_else() {
        assert_eq!(parse::<2>("0aFf"), Some([0x0a, 0xff]));
        assert_eq!(parse::<4>("deadbeef"), Some([0xde, 0xad, 0xbe, 0xef]));
        for bad in [
            "", "0", "0af", "0aff0", "+f0a", " f0a", "0x0a", "zz00", "éa",
        ] {
            assert_eq!(parse::<2>(bad), None, "{bad:?}");
        }
    }
}
