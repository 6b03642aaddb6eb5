//! The cluster tests' own harness works: Redis and PostgreSQL start on loopback, answer,
//! and come back after an outage.

#[allow(unused_macros)] // the engine_tests! macro is for the server tests
mod common;

use common::services::{Postgres, Redis};

#[test]
fn redis_starts_answers_and_comes_back() {
    let mut redis = Redis::start();
    assert_eq!(redis.cli(&["PING"]).trim(), "PONG");
    redis.stop();
    assert!(std::net::TcpStream::connect(redis.addr()).is_err());
    redis.resume();
    assert_eq!(redis.cli(&["SET", "k", "v"]).trim(), "OK");
}

#[test]
fn postgres_starts_answers_and_comes_back() {
    let mut postgres = Postgres::start();
    assert_eq!(postgres.psql("relay", "SELECT 40 + 2").trim(), "42");
    postgres.stop();
    postgres.resume();
    assert_eq!(postgres.psql("relay", "SELECT 1").trim(), "1");
}
