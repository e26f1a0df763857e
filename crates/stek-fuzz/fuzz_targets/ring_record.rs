//! The ring record decoder (what every node reads from the store): any bytes must give a
//! checked ring or a `RecordError`, and a decoded ring must encode back to a record that
//! decodes to the same ring.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stek_store::records::{decode_ring, encode_ring};

fuzz_target!(|data: &[u8]| {
    if let Ok(ring) = decode_ring(data) {
        let again = decode_ring(&encode_ring(&ring)).expect("a re-encoded ring decodes");
        assert_eq!(again, ring);
    }
});
