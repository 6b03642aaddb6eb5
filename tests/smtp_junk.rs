//! Issue 14 (low): the junk-command limit (`smtp.junk_commands_max`, Postfix's
//! `smtpd_junk_command_limit`) is a config key. Under it, junk is not an error: a client that
//! pipelines 2,000 NOOPs over a real socket gets 2,000 `250`s in order, with no tarpit delay.
//! Past it, each junk command counts as an error as before.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::{Engine, Relay, Settings};

engine_tests! {
    pipelined_noops_under_the_limit_all_get_250: pipelined_noops_under_the_limit_all_get_250_uring, pipelined_noops_under_the_limit_all_get_250_epoll;
    junk_past_the_limit_still_ends_the_session: junk_past_the_limit_still_ends_the_session_uring, junk_past_the_limit_still_ends_the_session_epoll;
}

const NOOPS: usize = 2000;
/// A tarpitted reply would wait this long; the whole batch must come back well within it.
const ERROR_DELAY: Duration = Duration::from_secs(3);

/// `delay`: the tarpit's `smtp.error_delay` past 5 errors.
fn settings(engine: Engine, junk_max: u32, delay: &str) -> Settings {
    let mut settings = Settings::new(engine);
    settings.smtp_toml =
        format!("junk_commands_max = {junk_max}\nerror_delay_after = 5\nerror_delay = {delay:?}\n");
    settings
}

/// Sends `EHLO` and `count` NOOPs in one write; returns the reply lines after EHLO's.
fn pipeline_noops(relay: &Relay, count: usize) -> (Vec<String>, Duration) {
    let mut client = relay.client();
    client.ehlo();
    let batch = "NOOP\r\n".repeat(count);
    let started = Instant::now();
    client.send(batch.as_bytes()).expect("send the batch");
    let mut reader = BufReader::new(client.stream().try_clone().expect("clone"));
    let mut lines = Vec::new();
    let mut line = String::new();
    while lines.len() < count {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => lines.push(line.trim_end().to_string()),
        }
        if lines.last().is_some_and(|l| l.starts_with("421")) {
            break;
        }
    }
    (lines, started.elapsed())
}

fn pipelined_noops_under_the_limit_all_get_250(engine: Engine) {
    let relay = Relay::start(settings(engine, 3000, "3s"));
    let (lines, took) = pipeline_noops(&relay, NOOPS);
    assert_eq!(
        lines.len(),
        NOOPS,
        "last replies: {:?}",
        lines.iter().rev().take(3).collect::<Vec<_>>()
    );
    if let Some((n, bad)) = lines
        .iter()
        .enumerate()
        .find(|(_, l)| !l.starts_with("250 "))
    {
        panic!("NOOP {} answered {bad:?}", n + 1);
    }
    assert!(took < ERROR_DELAY, "2000 NOOPs took {took:?}: tarpitted");
    relay.stop();
}

fn junk_past_the_limit_still_ends_the_session(engine: Engine) {
    // No tarpit here: its delays add up over one pipelined batch (by design) and would
    // outlast the client's read timeout.
    let relay = Relay::start(settings(engine, 50, "0s"));
    // EHLO is junk too: 49 NOOPs reach the limit, each further one is an error (after its
    // 250); the 20th error (the default smtp.errors_max) closes with 421.
    let (lines, _) = pipeline_noops(&relay, 200);
    let first_421 = lines.iter().position(|l| l.starts_with("421"));
    assert_eq!(
        first_421,
        Some(49 + 20),
        "{:?}",
        &lines[lines.len().min(45)..]
    );
    relay.stop();
}
