//! Fuzz target: `relay::mime::fuzz::base64_decode` (the same function the unit tests run over
//! `fuzz/corpus/base64`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    relay::mime::fuzz::base64_decode(data);
});
