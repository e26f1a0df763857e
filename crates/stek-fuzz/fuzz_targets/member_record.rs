//! The member record decoder: any bytes give a record or a `RecordError`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stek_store::MemberRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = MemberRecord::decode(data) {
        assert_eq!(MemberRecord::decode(&m.encode()).expect("round trip"), m);
    }
});
