//! The rotation request decoder: any bytes give a request or a `RecordError`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stek_store::RequestRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = RequestRecord::decode(data) {
        assert_eq!(RequestRecord::decode(&r.encode()).expect("round trip"), r);
    }
});
