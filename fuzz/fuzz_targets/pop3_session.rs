//! Fuzz target: `relay::pop3::fuzz::session` (the POP3 server session driven as the
//! connection driver drives it, every event answered; the same function the unit tests run
//! over `fuzz/corpus/pop3`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    relay::pop3::fuzz::session(data);
});
