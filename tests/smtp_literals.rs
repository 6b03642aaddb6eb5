//! Issue 14, Medium 3: address literals holding multi-byte characters, sent to a real relay
//! right after connecting. They once panicked the connection's task (a `str` sliced inside a
//! character); now each gets a 501 and the same connection goes on to deliver a message.

#[macro_use]
mod common;

use common::{Engine, Relay, Settings};

engine_tests! {
    non_ascii_address_literals_get_501_and_the_connection_goes_on: non_ascii_address_literals_get_501_and_the_connection_goes_on_uring, non_ascii_address_literals_get_501_and_the_connection_goes_on_epoll;
}

const LITERALS: [&str; 4] = [
    "MAIL FROM:<a@[abcd€]>",
    "RCPT TO:<x@[IPv6€:1]>",
    "MAIL FROM:<a@[IPvé:1]> SMTPUTF8",
    "RCPT TO:<x@[IPv6:𝄞]>",
];

fn non_ascii_address_literals_get_501_and_the_connection_goes_on(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    // Before any greeting from the client, as the reproduction did.
    let mut client = relay.client();
    for line in LITERALS {
        let reply = client
            .cmd(line)
            .unwrap_or_else(|e| panic!("{line:?}: no reply ({e}); log:\n{}", relay.log().render()));
        assert_eq!(reply.code, 501, "{line:?}: {reply}");
    }
    client.expect("NOOP", 250);
    // And inside a transaction: the bad recipient is refused, the session goes on.
    client.ehlo();
    client.expect("MAIL FROM:<sender@example.test>", 250);
    for line in &LITERALS[1..2] {
        let reply = client.cmd(line).expect("reply");
        assert_eq!(reply.code, 501, "{line:?}: {reply}");
    }
    client.expect("RCPT TO:<one@example.test>", 250);
    client.expect("DATA", 354);
    client
        .send(b"Subject: after the literals\r\n\r\nstill here\r\n.\r\n")
        .expect("send body");
    let reply = client.read_reply().expect("reply to the body");
    assert_eq!(reply.code, 250, "{reply}");
    assert!(reply.queue_id().is_some(), "{reply}");
    client.quit();
    assert!(
        !relay.log_contains("panicked"),
        "a panic in the log:\n{}",
        relay.log().render()
    );
    relay.stop();
}
