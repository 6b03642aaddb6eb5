//! Issue 14 (low): POP3 message numbers survive a restart. The maildrops are rebuilt from
//! the spool's index, a hash map; numbering followed its order, so `LIST` and `UIDL` changed
//! after a restart. A maildrop is in arrival order (queue-id order), before and after.

#[macro_use]
mod common;

use common::{Engine, Relay, Settings};

engine_tests! {
    numbers_are_the_same_after_a_restart: numbers_are_the_same_after_a_restart_uring, numbers_are_the_same_after_a_restart_epoll;
}

/// Enough messages that a hash order equals arrival order by chance with odds of 1 in 20!.
const MESSAGES: usize = 20;

/// LIST's (number, size) and UIDL's (number, uid) of one mailbox.
type Listing = (Vec<(usize, u64)>, Vec<(usize, String)>);

fn listing(relay: &Relay) -> Listing {
    let mut pop = relay.pop3_login("alice");
    let list = pop.list();
    let uidl = pop.uidl();
    pop.quit().expect("QUIT");
    (list, uidl)
}

fn numbers_are_the_same_after_a_restart(engine: Engine) {
    let relay = Relay::start(Settings::new(engine));
    let mut ids = Vec::new();
    for n in 0..MESSAGES {
        // Sizes differ, so LIST shows the order as well as UIDL does.
        let body = format!("Subject: message {n}\r\n\r\n{}\r\n", "x".repeat(n * 7));
        ids.push(relay.deliver(&["alice@example.test"], body.as_bytes()));
    }
    let (list_before, uidl_before) = listing(&relay);
    assert_eq!(list_before.len(), MESSAGES, "{list_before:?}");
    relay.stop();

    let restarted = relay.restart(Settings::new(engine));
    let (list_after, uidl_after) = listing(&restarted);
    assert_eq!(
        uidl_after, uidl_before,
        "UIDL changed across the restart (LIST before {list_before:?}, after {list_after:?})"
    );
    assert_eq!(list_after, list_before, "LIST changed across the restart");
    // And the order is arrival order: sizes grow with n, message 1 is the first sent.
    let sizes: Vec<u64> = list_after.iter().map(|&(_, size)| size).collect();
    assert!(
        sizes.windows(2).all(|w| w[0] < w[1]),
        "not in arrival order: {list_after:?}"
    );
    restarted.stop();
}
