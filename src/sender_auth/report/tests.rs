use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::feedback::{self, Submitter};
use super::*;

fn settings(dir: &Path) -> ReportSettings {
    ReportSettings {
        enabled: true,
        org_name: "Relay Test".into(),
        report_from: "dmarc@relay.test".into(),
        receiver: "relay.test".into(),
        interval: Duration::from_secs(86_400),
        flush_interval: Duration::from_secs(60),
        max_records: 100,
        max_domains: 10,
        max_report_size: 1 << 20,
        dir: dir.to_path_buf(),
    }
}

fn policy(domain: &str) -> PublishedPolicy {
    PublishedPolicy {
        domain: domain.into(),
        adkim_strict: false,
        aspf_strict: true,
        p: Disposition::Reject,
        sp: Disposition::Quarantine,
        pct: 100,
        rua: vec![format!("mailto:dmarc@{domain}")],
    }
}

/// 2026-12-04 10:00:00 UTC.
const NOON_ISH: u64 = 1_796_378_400;

fn observation(domain: &str, ip: IpAddr, t: u64) -> Observation {
    Observation {
        unix_time: t,
        source_ip: ip,
        header_from: domain.into(),
        envelope_from: domain.into(),
        policy: policy(domain),
        disposition: Disposition::None,
        dkim_aligned: AuthResult::Pass,
        spf_aligned: AuthResult::Fail,
        dkim: vec![(domain.into(), "sel".into(), AuthResult::Pass)],
        spf: (domain.into(), false, AuthResult::SoftFail),
    }
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
}

#[test]
fn same_rows_aggregate_and_intervals_align_to_utc_midnight() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::new(&settings(dir.path()));
    for _ in 0..3 {
        recorder.record(observation("a.example", v4(1), NOON_ISH));
    }
    recorder.record(observation("a.example", v4(2), NOON_ISH + 60));
    recorder.record(observation("b.example", v4(1), NOON_ISH));
    assert_eq!(recorder.rows(), 3);
    let midnight = NOON_ISH - NOON_ISH % 86_400;
    assert_eq!(recorder.next_end(), Some(midnight + 86_400));
    assert!(
        recorder.due(midnight + 86_399).is_empty(),
        "not due before the end"
    );
    let due = recorder.due(midnight + 86_400);
    assert_eq!(due.len(), 2);
    let a = &due[0];
    assert_eq!(
        (a.domain.as_str(), a.begin, a.end),
        ("a.example", midnight, midnight + 86_400)
    );
    let counts: Vec<u64> = a.rows.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, vec![3, 1], "largest count first");
    recorder.settle(a);
    assert_eq!(recorder.rows(), 1);
    assert_eq!(recorder.due(midnight + 86_400).len(), 1);
}

#[test]
fn domains_without_rua_are_not_kept_and_disabled_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::new(&settings(dir.path()));
    let mut o = observation("a.example", v4(1), NOON_ISH);
    o.policy.rua.clear();
    recorder.record(o);
    assert_eq!(recorder.rows(), 0);
    let off = Recorder::new(&ReportSettings {
        enabled: false,
        ..settings(dir.path())
    });
    off.record(observation("a.example", v4(1), NOON_ISH));
    assert_eq!(off.rows(), 0);
    assert!(!off.flush(&settings(dir.path())).unwrap());
}

#[test]
fn storage_refuses_rows_beyond_max_records_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = ReportSettings {
        max_records: 3,
        max_domains: 2,
        ..settings(dir.path())
    };
    let recorder = Recorder::new(&s);
    let metric = prometheus_client::metrics::counter::Counter::<u64>::default();
    recorder.count_drops_in(metric.clone());
    for last in 1..=5 {
        recorder.record(observation("a.example", v4(last), NOON_ISH));
    }
    assert_eq!(recorder.rows(), 3);
    assert_eq!(recorder.dropped(), 2);
    assert_eq!(metric.get(), 2);
    // A known row still counts when full.
    recorder.record(observation("a.example", v4(1), NOON_ISH));
    assert_eq!(recorder.dropped(), 2);
    let due = recorder.due(u64::MAX);
    assert_eq!(due[0].rows[0].1, 2);
    // A new domain is refused when full, and beyond max_domains even when not.
    recorder.record(observation("b.example", v4(1), NOON_ISH));
    assert_eq!(recorder.dropped(), 3);
    let roomy = Recorder::new(&ReportSettings {
        max_domains: 2,
        ..settings(dir.path())
    });
    for domain in ["a.example", "b.example", "c.example"] {
        roomy.record(observation(domain, v4(1), NOON_ISH));
    }
    assert_eq!((roomy.rows(), roomy.dropped()), (2, 1));
    // Another interval may have its own domains.
    roomy.record(observation("c.example", v4(1), NOON_ISH + 86_400));
    assert_eq!(roomy.rows(), 3);
}

#[test]
fn flushed_counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let recorder = Recorder::new(&s);
    recorder.record(observation("a.example", v4(1), NOON_ISH));
    recorder.record(observation("a.example", v4(1), NOON_ISH));
    recorder.record(observation(
        "b.example",
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        NOON_ISH,
    ));
    assert!(recorder.flush(&s).unwrap());
    assert!(!recorder.flush(&s).unwrap(), "nothing changed");
    let mode = std::fs::metadata(s.state_file()).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let again = Recorder::load(&s).unwrap();
    assert_eq!(again.due(u64::MAX), recorder.due(u64::MAX));
    // Loading into smaller bounds drops (and counts) what does not fit.
    let small = Recorder::load(&ReportSettings {
        max_records: 1,
        ..s.clone()
    })
    .unwrap();
    assert_eq!(small.rows(), 1);
    assert!(small.dropped() >= 1);
    // A missing file is an empty start; a broken one an error.
    assert_eq!(
        Recorder::load(&settings(&dir.path().join("none")))
            .unwrap()
            .rows(),
        0
    );
    std::fs::write(s.state_file(), b"{not json").unwrap();
    assert!(matches!(
        Recorder::load(&s),
        Err(ReportError::Format { .. })
    ));
}

#[test]
fn peer_strings_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::new(&settings(dir.path()));
    let mut o = observation("a.example", v4(1), NOON_ISH);
    o.header_from = "é".repeat(1000);
    o.dkim = (0..100)
        .map(|i| (format!("d{i}.example"), "s".into(), AuthResult::Fail))
        .collect();
    recorder.record(o);
    let due = recorder.due(u64::MAX);
    let row = &due[0].rows[0].0;
    assert!(row.header_from.len() <= 255);
    assert_eq!(row.dkim.len(), 8);
}

#[test]
fn rua_uris_are_read_strictly() {
    let t = feedback::parse_rua("mailto:dmarc@Reports.Example!10m").unwrap();
    assert_eq!(t.address, "dmarc@reports.example");
    assert_eq!(t.max_size, Some(10 << 20));
    let t = feedback::parse_rua(" MAILTO:agg%2Bx@example.org").unwrap();
    assert_eq!(
        (t.address.as_str(), t.max_size),
        ("agg+x@example.org", None)
    );
    for bad in [
        "https://example.org/report",
        "mailto:a b@example.org",
        "mailto:x@example.org\r\nBcc: y@z",
        "mailto:x@example.org%0d%0aBcc:%20y@z",
        "mailto:<x@example.org>",
        "mailto:@example.org",
        "mailto:x@example.org!10q",
        "mailto:x@",
    ] {
        assert_eq!(feedback::parse_rua(bad), None, "{bad:?}");
    }
    let other = feedback::parse_rua("mailto:r@reports.example").unwrap();
    assert!(feedback::needs_authorization("sender.example", &other));
    assert_eq!(
        feedback::authorization_name("sender.example", &other),
        "sender.example._report._dmarc.reports.example."
    );
    let own = feedback::parse_rua("mailto:r@mx.Sender.example").unwrap();
    assert!(!feedback::needs_authorization("sender.example", &own));
    assert!(feedback::authorizes("v=DMARC1"));
    assert!(feedback::authorizes("v=DMARC1; rua=mailto:x@y"));
    assert!(!feedback::authorizes("v=DMARC10"));
    assert!(!feedback::authorizes("v=spf1 -all"));
}

#[test]
fn the_message_names_the_report_and_escapes_the_xml() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::new(&settings(dir.path()));
    let mut o = observation("a.example", v4(1), NOON_ISH);
    o.header_from = "<evil>&\"x'".into();
    recorder.record(o);
    let report = &recorder.due(u64::MAX)[0];
    let submitter = Submitter {
        org_name: "Org & Co",
        email: "dmarc@relay.test",
        receiver: "relay.test",
    };
    let xml = feedback::xml(&submitter, report);
    assert!(xml.contains("<org_name>Org &amp; Co</org_name>"));
    assert!(xml.contains("<header_from>&lt;evil&gt;&amp;&quot;x&apos;</header_from>"));
    let midnight = NOON_ISH - NOON_ISH % 86_400;
    let name = feedback::file_name(&submitter, report);
    assert_eq!(
        name,
        format!(
            "relay.test!a.example!{midnight}!{}.xml.gz",
            midnight + 86_399
        )
    );
    let gz = feedback::gzip(xml.as_bytes());
    let mut unzipped = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut unzipped)
        .unwrap();
    assert_eq!(unzipped, xml);
    let message = feedback::message(&submitter, report, &["r@a.example"], &gz, 1_796_400_000);
    let text = String::from_utf8(message).unwrap();
    assert!(
        text.contains("\r\nSubject: Report Domain: a.example Submitter: relay.test Report-ID: <")
    );
    assert!(text.contains(&format!("filename=\"{name}\"")));
    assert!(text.contains("Content-Type: application/gzip"));
    assert!(!text.replace("\r\n", "").contains('\n'), "CRLF only");
    assert!(text.lines().all(|l| l.len() <= 998));
}
