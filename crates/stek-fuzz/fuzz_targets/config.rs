//! The TOML config parser: any text must give a config or a `ConfigError`, never a panic, and
//! an error must never quote a secret (it never reads secret files: only paths are checked).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = stek_node::Config::parse(std::path::Path::new("/fuzz/stek.toml"), text);
});
