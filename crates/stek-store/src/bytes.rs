//! Byte values in the Raft group's JSON (log entries, snapshots, the peer protocol's replies)
//! as base64 text. serde writes a `Vec<u8>` as an array of numbers, about 3.6 characters a
//! byte; every node reads the whole state after each change, and parsing those arrays was most
//! of the CPU a Raft rotation cost. Reading still takes the arrays that earlier versions wrote,
//! so a log or snapshot kept on disk across an upgrade still opens.
//!
//! Used as `#[serde(with = "bytes")]` on a `Vec<u8>`, `bytes::option` on an `Option<Vec<u8>>`
//! and `bytes::map` on a `BTreeMap<String, Vec<u8>>`.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Bytes written as base64 text.
struct Text<'a>(&'a [u8]);

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(self.0))
    }
}

/// Bytes read from base64 text, or from an array of numbers (what earlier versions wrote).
struct Bytes(Vec<u8>);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BytesVisitor).map(Bytes)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("base64 text, or an array of bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        B64.decode(v)
            .map_err(|e| E::custom(format_args!("a byte value is not base64 ({e})")))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // The size hint comes from the input: trust it only so far.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

/// Writes `v` as base64 text.
pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    Text(v).serialize(s)
}

/// Reads base64 text, or an array of bytes.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    Bytes::deserialize(d).map(|b| b.0)
}

/// The same for an `Option<Vec<u8>>` (give the field `#[serde(default)]` too).
pub mod option {
    use super::{Bytes, Deserialize, Deserializer, Serializer, Text};

    /// Writes `None` as null, bytes as base64 text.
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&Text(b)),
            None => s.serialize_none(),
        }
    }

    /// Reads null, base64 text, or an array of bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<Bytes>::deserialize(d)?.map(|b| b.0))
    }
}

/// The same for the values of a `BTreeMap<String, Vec<u8>>`.
pub mod map {
    use super::{BTreeMap, Bytes, Deserialize, Deserializer, Serializer, Text};

    /// Writes each value as base64 text.
    pub fn serialize<S: Serializer>(
        v: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(v.iter().map(|(k, b)| (k, Text(b))))
    }

    /// Reads each value from base64 text or an array of bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        Ok(BTreeMap::<String, Bytes>::deserialize(d)?
            .into_iter()
            .map(|(k, b)| (k, b.0))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        #[serde(with = "super")]
        one: Vec<u8>,
        #[serde(default, with = "super::option")]
        maybe: Option<Vec<u8>>,
        #[serde(default, with = "super::map")]
        many: BTreeMap<String, Vec<u8>>,
    }

    #[test]
    fn bytes_are_written_as_base64_and_read_back() {
        let s = Sample {
            one: b"{\"ring\":1}".to_vec(),
            maybe: Some(vec![0, 255, 7]),
            many: [("n1".to_owned(), vec![1, 2, 3]), ("n2".to_owned(), vec![])].into(),
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(
            text,
            r#"{"one":"eyJyaW5nIjoxfQ==","maybe":"AP8H","many":{"n1":"AQID","n2":""}}"#
        );
        assert_eq!(serde_json::from_str::<Sample>(&text).unwrap(), s);
        let none = Sample { maybe: None, ..s };
        let text = serde_json::to_string(&none).unwrap();
        assert!(text.contains(r#""maybe":null"#), "{text}");
        assert_eq!(serde_json::from_str::<Sample>(&text).unwrap(), none);
    }

    #[test]
    fn the_arrays_earlier_versions_wrote_still_read() {
        let old = r#"{"one":[123,125],"maybe":[0,255],"many":{"n1":[1,2,3]}}"#;
        let s: Sample = serde_json::from_str(old).unwrap();
        assert_eq!(s.one, b"{}");
        assert_eq!(s.maybe, Some(vec![0, 255]));
        assert_eq!(s.many["n1"], vec![1, 2, 3]);
        // A field left out (an older entry without it) reads as empty.
        let s: Sample = serde_json::from_str(r#"{"one":"AA=="}"#).unwrap();
        assert_eq!((s.maybe, s.many.len()), (None, 0));
    }

    #[test]
    fn what_is_neither_base64_nor_bytes_is_refused() {
        for bad in [
            r#"{"one":"not base64!"}"#,
            r#"{"one":[256]}"#,
            r#"{"one":[-1]}"#,
            r#"{"one":7}"#,
            r#"{"one":{"a":1}}"#,
            r#"{"one":"AA==","many":{"n1":"%%"}}"#,
        ] {
            let e = serde_json::from_str::<Sample>(bad).unwrap_err();
            assert!(
                e.to_string().contains("base64") || e.to_string().contains("invalid"),
                "{bad}: {e}"
            );
        }
    }
}
