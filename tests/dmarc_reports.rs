//! DMARC aggregate reports (RFC 7489 §7): the report XML validates against RFC 7489's
//! schema (tests/data/dmarc/rua.xsd) with xmllint; the real relay, started on counts a
//! previous run left on disk, sends the report of an interval that has ended to the `rua=`
//! address through its own spool and outbound queue (a static route to a scripted sink), only
//! to a destination that authorised it in DNS (RFC 7489 §7.1, answered by
//! tests/py/dns_server.py), and keeps counts across a restart.
//!
//! The counts are written with the library's own `Recorder` (what the checks at ingest feed),
//! so those tests do not depend on the verification code. One test runs the whole path end
//! to end instead: real messages over smtplib, checked at ingest (`[verify]`), counted,
//! reported at the end of a short interval, DKIM-signed with a `relay dkim keygen` Ed25519
//! key and verified by dkimpy (tests/py/dkim_verify.py).

#[macro_use]
mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::dns::DnsServer;
use common::json::Json;
use common::sinks::Sink;
use common::{
    describe, new_workdir, relay_cmd, repo_path, run_with_timeout, Engine, Relay, Settings,
    COMMAND_TIMEOUT,
};
use relay::sender_auth::report::feedback::{self, Submitter};
use relay::sender_auth::report::{
    AuthResult, Disposition, Observation, PublishedPolicy, Recorder, ReportSettings,
};

fn schema() -> PathBuf {
    repo_path("tests/data/dmarc/rua.xsd")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn report_settings(dir: &Path, interval: Duration) -> ReportSettings {
    ReportSettings {
        enabled: true,
        org_name: "Relay Test".into(),
        report_from: "dmarc-reports@relay.test".into(),
        receiver: "relay.test".into(),
        interval,
        flush_interval: Duration::from_secs(60),
        max_records: 1000,
        max_domains: 100,
        max_report_size: 10 << 20,
        dir: dir.to_path_buf(),
    }
}

fn policy(domain: &str, rua: &str) -> PublishedPolicy {
    PublishedPolicy {
        domain: domain.into(),
        adkim_strict: false,
        aspf_strict: true,
        p: Disposition::Reject,
        sp: Disposition::Quarantine,
        pct: 50,
        rua: vec![rua.into()],
    }
}

fn observation(policy: &PublishedPolicy, ip: IpAddr, t: u64) -> Observation {
    Observation {
        unix_time: t,
        source_ip: ip,
        header_from: policy.domain.clone(),
        envelope_from: format!("bounce.{}", policy.domain),
        policy: policy.clone(),
        disposition: Disposition::None,
        dkim_aligned: AuthResult::Pass,
        spf_aligned: AuthResult::Fail,
        dkim: vec![(policy.domain.clone(), "s1".into(), AuthResult::Pass)],
        spf: (
            format!("bounce.{}", policy.domain),
            false,
            AuthResult::SoftFail,
        ),
    }
}

/// Runs xmllint on `xml`: (exit status, what it said).
fn xmllint(xml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.xml");
    std::fs::write(&file, xml).unwrap();
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(schema())
        .arg(&file)
        .output()
        .expect("xmllint (Debian libxml2-utils)");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), said)
}

/// Every result, disposition and scope, IPv4 and IPv6 sources, several signatures and a
/// hostile header_from: the XML is valid under RFC 7489's schema, and the schema does refuse
/// a report that breaks it (the check can fail).
#[test]
fn report_xml_validates_against_the_rfc_7489_schema() {
    let dir = tempfile::tempdir().unwrap();
    let settings = report_settings(dir.path(), Duration::from_secs(86_400));
    let recorder = Recorder::new(&settings);
    let p = policy("sender.example", "mailto:dmarc@sender.example");
    let results = [
        AuthResult::None,
        AuthResult::Pass,
        AuthResult::Fail,
        AuthResult::SoftFail,
        AuthResult::Neutral,
        AuthResult::TempError,
        AuthResult::PermError,
        AuthResult::Policy,
    ];
    let dispositions = [
        Disposition::None,
        Disposition::Quarantine,
        Disposition::Reject,
    ];
    let t = unix_now() - 2 * 86_400;
    for (i, result) in results.iter().enumerate() {
        let ip = if i % 2 == 0 {
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, i as u8))
        } else {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16))
        };
        let mut o = observation(&p, ip, t);
        o.disposition = dispositions[i % 3];
        o.dkim_aligned = *result;
        o.spf_aligned = results[(i + 1) % results.len()];
        o.dkim = vec![
            ("sender.example".into(), "s1".into(), *result),
            ("esp.example".into(), "x&y".into(), AuthResult::Fail),
        ];
        o.spf = ("helo.example".into(), i % 2 == 0, *result);
        o.header_from = format!("<b>&{i}</b>");
        recorder.record(o);
    }
    // An IPv4-mapped IPv6 source and a message without DKIM signatures.
    let mut o = observation(&p, "::ffff:192.0.2.7".parse().unwrap(), t);
    o.dkim.clear();
    recorder.record(o);
    let due = recorder.due(unix_now());
    assert_eq!(due.len(), 1);
    let submitter = Submitter {
        org_name: "Relay <Test> & Co",
        email: "dmarc-reports@relay.test",
        receiver: "relay.test",
    };
    let xml = feedback::xml(&submitter, &due[0]);
    assert_eq!(due[0].rows.len(), results.len() + 1);
    let (rc, said) = xmllint(&xml);
    assert_eq!(rc, 0, "xmllint: {said}\n{xml}");
    assert!(
        xml.contains("<source_ip>2001:db8:0:0:0:0:0:1</source_ip>"),
        "{xml}"
    );
    assert!(xml.contains("<source_ip>192.0.2.7</source_ip>"), "{xml}");

    let broken = xml
        .replacen("<count>", "<cnt>", 1)
        .replacen("</count>", "</cnt>", 1);
    let (rc, said) = xmllint(&broken);
    assert_ne!(rc, 0, "the schema accepted a broken report: {said}");
    let compressed = xml.replace("2001:db8:0:0:0:0:0:1", "2001:db8::1");
    let (rc, _) = xmllint(&compressed);
    assert_ne!(
        rc, 0,
        "the schema's IPAddress pattern takes only full IPv6 addresses"
    );
}

/// The relay's config for reports sent to the sink through a static route.
fn settings(engine: Engine, dns_port: u16, sink: &Sink, interval: &str) -> Settings {
    let mut settings = Settings::new(engine);
    settings.server_toml = format!("dns_servers = [\"127.0.0.1:{dns_port}\"]\n");
    settings.routes = vec![
        ("reports.example".into(), sink.addr.to_string()),
        ("*".into(), "127.0.0.1:1".into()),
    ];
    settings.extra_toml = format!(
        "[dmarc]\nreports = true\nreport_interval = {interval:?}\n\
         report_from = \"dmarc-reports@relay.test\"\norg_name = \"Relay Test\"\n"
    );
    settings
}

fn check_message(file: &[u8]) -> Json {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("message");
    std::fs::write(&path, file).unwrap();
    let out = Command::new("/usr/bin/python3")
        .arg(repo_path("tests/py/dmarc_report_check.py"))
        .arg(&path)
        .arg(schema())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Json::parse(&String::from_utf8_lossy(&out.stdout)).unwrap()
}

/// Counts a previous run left for an interval that has ended: the relay sends the report of
/// the domain whose `rua=` destination authorised it, to that address, from `report_from`,
/// as a gzip attachment whose XML validates and holds the counts; the report of the domain
/// whose destination did not authorise it is not sent; both are then forgotten.
fn due_report_is_delivered_to_the_authorised_rua(engine: Engine) {
    let dns = DnsServer::start(&["sender.example._report._dmarc.reports.example=txt:v=DMARC1"]);
    let sink = Sink::scripted(0, &[]);
    let workdir = new_workdir();
    let dmarc_dir = workdir.path().join("spool").join("dmarc");
    std::fs::create_dir_all(&dmarc_dir).unwrap();
    let counts = report_settings(&dmarc_dir, Duration::from_secs(10));
    let recorder = Recorder::new(&counts);
    let ended = unix_now() - 60;
    let sender = policy("sender.example", "mailto:dmarc@reports.example!1m");
    let other = policy("other.example", "mailto:agg@reports.example");
    for _ in 0..3 {
        recorder.record(observation(&sender, "192.0.2.10".parse().unwrap(), ended));
    }
    recorder.record(observation(&sender, "2001:db8::25".parse().unwrap(), ended));
    recorder.record(observation(&other, "192.0.2.11".parse().unwrap(), ended));
    assert!(recorder.flush(&counts).unwrap());

    let relay = Relay::start_in(workdir, settings(engine, dns.port, &sink, "10s"));
    let messages = sink.wait_messages(1, Duration::from_secs(30));
    relay.wait_log(
        &["rua destination not authorised", "other.example"],
        Duration::from_secs(20),
    );
    relay.wait_log(
        &["DMARC aggregate report queued", "sender.example"],
        Duration::from_secs(5),
    );
    let report = check_message(&messages[0]);
    let envelope: Vec<&str> = report
        .get("envelope")
        .array()
        .iter()
        .map(Json::str)
        .collect();
    assert_eq!(
        envelope,
        [
            "MAIL:dmarc-reports@relay.test",
            "RCPT:dmarc@reports.example"
        ],
        "{report:?}"
    );
    assert_eq!(report.get("from").str(), "dmarc-reports@relay.test");
    assert_eq!(report.get("to").str(), "dmarc@reports.example");
    assert_eq!(report.get("auto_submitted").str(), "auto-generated");
    let subject = report.get("subject").str();
    assert!(
        subject.starts_with("Report Domain: sender.example Submitter: relay.test Report-ID: <"),
        "{subject}"
    );
    let begin = ended - ended % 10;
    let name = format!("relay.test!sender.example!{begin}!{}.xml.gz", begin + 9);
    let attachments: Vec<&str> = report
        .get("attachments")
        .array()
        .iter()
        .map(Json::str)
        .collect();
    assert_eq!(attachments, [name.as_str()]);
    assert_eq!(
        report.get("xmllint_rc").int(),
        0,
        "{}\n{}",
        report.get("xmllint").str(),
        report.get("xml").str()
    );
    let xml = report.get("xml").str();
    for needle in [
        "<org_name>Relay Test</org_name>",
        "<domain>sender.example</domain>",
        "<pct>50</pct>",
        &format!("<begin>{begin}</begin>"),
        "<source_ip>192.0.2.10</source_ip>\n      <count>3</count>",
        "<source_ip>2001:db8:0:0:0:0:0:25</source_ip>\n      <count>1</count>",
    ] {
        assert!(xml.contains(needle), "{needle:?} not in\n{xml}");
    }
    assert!(!xml.contains("192.0.2.11"), "{xml}");
    // The authorisation was asked for the other destination's domain.
    let queries = dns.queries();
    assert!(
        queries
            .iter()
            .any(|q| q.starts_with("other.example._report._dmarc.reports.example")),
        "{queries:?}"
    );

    // Both reports are settled: the counts written at shutdown hold neither.
    relay.stop();
    let after = Recorder::load(&counts).unwrap();
    assert_eq!(after.rows(), 0);
    assert_eq!(sink.messages().len(), 1, "one report only");
}

/// Counts of an interval still running survive a relay's stop and start: the relay loads
/// them, keeps them in memory while it runs (the file removed under it) and writes them at
/// shutdown, unchanged; the next start loads them again.
fn counts_survive_a_restart(engine: Engine) {
    let dns = DnsServer::start(&[]);
    let sink = Sink::scripted(0, &[]);
    let workdir = new_workdir();
    let dmarc_dir = workdir.path().join("spool").join("dmarc");
    std::fs::create_dir_all(&dmarc_dir).unwrap();
    let counts = report_settings(&dmarc_dir, Duration::from_secs(86_400));
    let recorder = Recorder::new(&counts);
    let p = policy("sender.example", "mailto:dmarc@sender.example");
    for last in 1..=5u8 {
        // Tomorrow's interval: nothing falls due while the test runs, even across midnight.
        recorder.record(observation(
            &p,
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)),
            unix_now() + 86_400,
        ));
    }
    assert!(recorder.flush(&counts).unwrap());
    let before = recorder.due(u64::MAX);

    let relay = Relay::start_in(workdir, settings(engine, dns.port, &sink, "1d"));
    relay.wait_log(
        &["DMARC report counts loaded", "rows=5"],
        Duration::from_secs(10),
    );
    // The relay holds the counts in memory and writes them at shutdown.
    std::fs::remove_file(counts.state_file()).unwrap();
    relay.stop();
    assert_eq!(Recorder::load(&counts).unwrap().due(u64::MAX), before);
    let relay = relay.restart(settings(engine, dns.port, &sink, "1d"));
    relay.wait_log(
        &["DMARC report counts loaded", "rows=5"],
        Duration::from_secs(10),
    );
    relay.stop();
    assert_eq!(Recorder::load(&counts).unwrap().due(u64::MAX), before);
    assert!(sink.messages().is_empty(), "nothing was due");
}

/// `relay dkim keygen DOMAIN SELECTOR --ed25519 --out DIR/SELECTOR.key`: the key file (0600)
/// and the TXT record text it printed (its character-strings joined).
fn keygen_ed25519(dir: &Path, domain: &str, selector: &str) -> (PathBuf, String) {
    let file = dir.join(format!("{selector}.key"));
    let output = relay_cmd([
        "dkim",
        "keygen",
        domain,
        selector,
        "--ed25519",
        "--out",
        file.to_str().expect("utf-8"),
    ]);
    assert!(output.status.success(), "keygen: {}", describe(&output));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", file.display());
    let line = String::from_utf8(output.stdout).expect("utf-8");
    let record: String = line
        .split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    assert!(record.starts_with("v=DKIM1; k=ed25519; p="), "{line}");
    (file, record)
}

/// smtplib (tests/py/authres_send.py) sends one message from 127.0.0.1; its final reply.
fn smtplib_send(relay: &Relay, helo: &str, mail_from: &str, message: &[u8]) -> (u16, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), message).unwrap();
    let output = run_with_timeout(
        Command::new("/usr/bin/python3")
            .arg(repo_path("tests/py/authres_send.py"))
            .arg(relay.addr.port().to_string())
            .args([helo, mail_from, "bob@example.test"])
            .arg(file.path()),
        COMMAND_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "authres_send.py: {}",
        describe(&output)
    );
    let reply = Json::parse(&String::from_utf8_lossy(&output.stdout)).unwrap();
    (
        reply.get("code").int() as u16,
        reply.get("text").str().to_string(),
    )
}

/// dkimpy's verdict on each DKIM-Signature of `message` (keys from the test DNS server):
/// lines "pass d=D s=S" / "fail d=D s=S", and whether every one passed (none: false).
fn dkimpy(dns: &DnsServer, message: &[u8]) -> (Vec<String>, bool) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), message).unwrap();
    let output = run_with_timeout(
        Command::new("/usr/bin/python3")
            .arg(repo_path("tests/py/dkim_verify.py"))
            .arg(dns.port.to_string())
            .arg(file.path()),
        COMMAND_TIMEOUT,
    );
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (lines, output.status.success())
}

/// End to end: 127.0.0.1 (outside `relay.allowed_networks`, so checked) sends bob five
/// messages From sender.test (`p=none`, `rua=` at reports.test, which authorised it): three
/// whose MAIL FROM domain passes SPF and aligns (DMARC pass), two from other.test, which
/// passes SPF but does not align (DMARC fail, delivered under p=none). Within a bounded time
/// the report(s) of the short interval reach the rua sink through a static route; each
/// validates against RFC 7489's schema, carries the Ed25519 signature of report_from's
/// domain that dkimpy verifies, and together their rows count exactly the five messages,
/// from 127.0.0.1, with the right dispositions and results. Nothing else is sent, and the
/// counts are settled.
fn checked_mail_is_reported_signed(engine: Engine) {
    let workdir = new_workdir();
    let (key_file, key_record) = keygen_ed25519(workdir.path(), "relay.test", "rep");
    let dns = DnsServer::start(&[
        "sender.test=txt:v=spf1 ip4:127.0.0.1 -all",
        "other.test=txt:v=spf1 ip4:127.0.0.1 -all",
        "_dmarc.sender.test=txt:v=DMARC1; p=none; rua=mailto:dmarc@reports.test",
        "sender.test._report._dmarc.reports.test=txt:v=DMARC1",
        &format!("rep._domainkey.relay.test=txt:{key_record}"),
    ]);
    let sink = Sink::scripted(0, &[]);
    let mut settings = Settings::new(engine);
    settings.allowed_networks = vec!["192.0.2.0/24".into()];
    settings.server_toml = format!("dns_servers = [\"127.0.0.1:{}\"]\n", dns.port);
    settings.routes = vec![
        ("reports.test".into(), sink.addr.to_string()),
        ("*".into(), "127.0.0.1:1".into()),
    ];
    settings.extra_toml = format!(
        "[verify]\nenabled = true\ntimeout = \"3s\"\n\
         [dmarc]\nreports = true\nreport_interval = \"3s\"\nflush_interval = \"1s\"\n\
         report_from = \"dmarc-reports@relay.test\"\norg_name = \"Relay Test\"\n\
         [[dkim.sign]]\ndomain = \"relay.test\"\nselector = \"rep\"\nkey_file = {:?}\n\
         algorithm = \"ed25519-sha256\"\n",
        key_file.file_name().and_then(|n| n.to_str()).expect("name"),
    );
    let dmarc_dir = workdir.path().join("spool").join("dmarc");
    let relay = Relay::start_in(workdir, settings);

    let started = std::time::Instant::now();
    let sent = [
        ("pass-1", "a@sender.test"),
        ("fail-1", "b@other.test"),
        ("pass-2", "a@sender.test"),
        ("pass-3", "c@sender.test"),
        ("fail-2", "d@other.test"),
    ];
    for (marker, mail_from) in sent {
        let message = format!(
            "From: X <x@sender.test>\r\nTo: Bob <bob@example.test>\r\nSubject: {marker}\r\n\
             Date: Fri, 04 Dec 2026 12:00:00 +0000\r\nMessage-ID: <{marker}@client.test>\r\n\r\n\
             marker {marker}\r\n"
        );
        let (code, text) =
            smtplib_send(&relay, "client.nowhere.test", mail_from, message.as_bytes());
        assert_eq!(code, 250, "{marker}: {text}");
    }

    // A boundary of the 3s interval may fall between the messages: then there are two
    // reports. Wait (bounded) until the reports' rows count every message. (The reporter
    // idle with no counts sleeps until its next flush, so flush_interval = 1s keeps the
    // report prompt.)
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (files, reports, rows) = loop {
        let files = sink.messages();
        let reports: Vec<Json> = files.iter().map(|m| check_message(m)).collect();
        let rows: Vec<Json> = reports
            .iter()
            .flat_map(|r| r.get("records").array().to_vec())
            .collect();
        let counted: i64 = rows.iter().map(|r| r.get("count").int()).sum();
        if counted >= sent.len() as i64 {
            break (files, reports, rows);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reports counting {counted} of {} messages within 60s: {reports:?}\n{}",
            sent.len(),
            relay.log().render()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "{} report(s) at the sink {:?} after the first message",
        reports.len(),
        started.elapsed()
    );
    assert!((1..=2).contains(&reports.len()), "{reports:?}");

    for (report, file) in reports.iter().zip(&files) {
        let envelope: Vec<&str> = report
            .get("envelope")
            .array()
            .iter()
            .map(Json::str)
            .collect();
        assert_eq!(
            envelope,
            ["MAIL:dmarc-reports@relay.test", "RCPT:dmarc@reports.test"],
            "{report:?}"
        );
        assert_eq!(
            report.get("xmllint_rc").int(),
            0,
            "{}\n{}",
            report.get("xmllint").str(),
            report.get("xml").str()
        );
        let xml = report.get("xml").str();
        for needle in [
            "<domain>sender.test</domain>",
            "<p>none</p>",
            "<email>dmarc-reports@relay.test</email>",
        ] {
            assert!(xml.contains(needle), "{needle:?} not in\n{xml}");
        }
        // The report's own signature: d= report_from's domain, Ed25519, verified by dkimpy
        // with the key the test DNS server publishes.
        let (_, data) = common::sinks::split_scripted(file);
        let (verdicts, ok) = dkimpy(&dns, &data);
        assert_eq!(
            verdicts,
            ["pass d=relay.test s=rep"],
            "dkimpy on the report:\n{}",
            String::from_utf8_lossy(&data)
        );
        assert!(ok);
        let head = String::from_utf8_lossy(&data);
        assert!(head.contains("a=ed25519-sha256"), "{head}");
    }

    // Every message once, by row: 127.0.0.1, delivered (disposition none under p=none),
    // no DKIM signature, SPF pass for the envelope domain, aligned only for sender.test.
    let mut counts: std::collections::BTreeMap<String, i64> = Default::default();
    for row in &rows {
        assert_eq!(row.get("source_ip").str(), "127.0.0.1", "{row:?}");
        assert_eq!(row.get("disposition").str(), "none", "{row:?}");
        assert_eq!(row.get("header_from").str(), "sender.test", "{row:?}");
        assert_eq!(row.get("dkim").str(), "fail", "{row:?}");
        assert!(row.get("auth_dkim").array().is_empty(), "{row:?}");
        let envelope_from = row.get("envelope_from").str();
        let aligned = if envelope_from == "sender.test" {
            "pass"
        } else {
            "fail"
        };
        assert_eq!(row.get("spf").str(), aligned, "{row:?}");
        assert_eq!(
            row.get("auth_spf").str(),
            format!("{envelope_from} mfrom pass"),
            "{row:?}"
        );
        *counts.entry(envelope_from.to_string()).or_default() += row.get("count").int();
    }
    let expected: std::collections::BTreeMap<String, i64> = [
        ("other.test".to_string(), 2),
        ("sender.test".to_string(), 3),
    ]
    .into();
    assert_eq!(counts, expected, "{rows:?}");

    // Nothing more is sent, and the counts are settled.
    std::thread::sleep(Duration::from_secs(4));
    relay.stop();
    assert_eq!(sink.messages().len(), reports.len(), "no further report");
    let left = Recorder::load(&report_settings(&dmarc_dir, Duration::from_secs(3))).unwrap();
    assert_eq!(left.rows(), 0);
}

engine_tests! {
    checked_mail_is_reported_signed: checked_mail_is_reported_signed_uring, checked_mail_is_reported_signed_epoll;
    due_report_is_delivered_to_the_authorised_rua: due_report_is_delivered_uring, due_report_is_delivered_epoll;
    counts_survive_a_restart: counts_survive_a_restart_uring, counts_survive_a_restart_epoll;
}
