//! Fuzz target: `relay::smtp::fuzz::session` (the SMTP server session driven as the
//! connection driver drives it; the same function the unit tests run over
//! `fuzz/corpus/smtp`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    relay::smtp::fuzz::session(data);
});
