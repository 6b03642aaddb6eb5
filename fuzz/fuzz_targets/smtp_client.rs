//! Fuzz target: `relay::smtp::client::fuzz` (the outbound SMTP client fed the bytes of a
//! hostile next hop, driven as the connection driver drives it; the same function the unit
//! tests run over `fuzz/corpus/smtp_client`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    relay::smtp::client::fuzz(data);
});
