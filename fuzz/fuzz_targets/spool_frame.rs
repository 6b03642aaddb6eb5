//! Fuzz target: `relay::spool::fuzz::decode_segment` (one segment file through the recovery
//! scanner, as given and with its checksums repaired; the same function the unit tests run
//! over `fuzz/corpus/spool_frame`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    relay::spool::fuzz::decode_segment(data);
});
