//! Fuzz target: `relay::mime::fuzz::parse_message` (the same function the unit tests run over
//! `fuzz/corpus/parse`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    relay::mime::fuzz::parse_message(data);
});
