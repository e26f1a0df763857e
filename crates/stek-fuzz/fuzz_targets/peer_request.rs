//! The embedded coordinator's peer protocol: a frame body from the network must decode to a
//! request or fail, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<stek_raft::wire::Request>(data);
});
