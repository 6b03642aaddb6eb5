//! Fuzz target: `relay::mime::fuzz::qp_decode` (the same function the unit tests run over
//! `fuzz/corpus/qp`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    relay::mime::fuzz::qp_decode(data);
});
