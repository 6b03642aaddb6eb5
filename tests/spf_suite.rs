//! The SPF council's RFC 7208 test suite (pyspf 2.0.14's `rfc7208-tests.yml`, installed by
//! tests/tools.sh) against the relay's own SPF evaluation, `sender_auth::spf::evaluate`, with
//! the resolver built as the relay builds it (`net::dns::SystemResolver::new`). Each scenario's
//! zone is served over loopback UDP/TCP by tests/py/dns_server.py, converted from the YAML by
//! tests/py/spf_suite.py.
//!
//! The suite's `host` is the client address, `helo` the HELO name, `mailfrom` the reverse
//! path; the result compared is the MAIL FROM identity's (the HELO identity's for `<>`), as
//! pyspf's own driver does. Every case passes, or is listed in [`EXCEPTIONS`] with the result
//! we give and why; a listed case that starts passing fails the test, so the list stays true.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::dns::DnsServer;
use mail_auth::{MessageAuthenticator, SpfOutput, SpfResult};
use relay::net::dns::SystemResolver;
use relay::sender_auth::spf::evaluate;

/// The suite's cases where mail-auth 0.13.3 gives another answer: (case name, the result we
/// give as `result` or `result/explanation`, why it is accepted).
const EXCEPTIONS: &[(&str, &str, &str)] = &[];

/// Our `%{r}` (the receiving host), as pyspf's driver leaves it.
const RECEIVER: &str = "unknown";

/// Bound on the whole suite: TIMEOUT zone entries wait out hickory's own timeouts.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(serde::Deserialize)]
struct Suite {
    scenarios: usize,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize, Clone)]
struct Case {
    scenario: usize,
    name: String,
    spec: String,
    helo: String,
    ip: String,
    mailfrom: String,
    results: Vec<String>,
    explanation: Option<String>,
}

fn suite_path() -> PathBuf {
    let dir =
        std::env::var("RELAY_TEST_TOOLS").unwrap_or_else(|_| "/var/tmp/relay-test-tools".into());
    let path = PathBuf::from(dir).join("rfc7208-tests.yml");
    assert!(
        path.is_file(),
        "{} is missing: run `bash tests/tools.sh` (tests/run.sh does)",
        path.display()
    );
    path
}

/// The suite converted: zone files and the case list, in `dir`.
fn convert(dir: &std::path::Path) -> Suite {
    let out = Command::new("/usr/bin/python3")
        .arg(common::repo_path("tests/py/spf_suite.py"))
        .arg(suite_path())
        .arg(dir)
        .output()
        .expect("run /usr/bin/python3 tests/py/spf_suite.py");
    assert!(
        out.status.success(),
        "spf_suite.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = std::fs::read(dir.join("cases.json")).expect("cases.json");
    serde_json::from_slice(&json).expect("cases.json parses")
}

fn result_name(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// What a case gave, in the form the exceptions list uses.
fn observed(case: &Case, output: &SpfOutput) -> String {
    let result = result_name(output.result());
    match &case.explanation {
        // pyspf's driver sets the default explanation to "DEFAULT"; mail-auth has none.
        Some(_) => format!("{result}/{}", output.explanation().unwrap_or("DEFAULT")),
        None => result.to_string(),
    }
}

fn passes(case: &Case, output: &SpfOutput) -> bool {
    let result = result_name(output.result());
    case.results.iter().any(|r| r == result)
        && case
            .explanation
            .as_deref()
            .is_none_or(|want| want == output.explanation().unwrap_or("DEFAULT"))
}

#[test]
fn rfc7208_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let suite = convert(dir.path());
    assert!(
        suite.cases.len() >= 200,
        "only {} cases read",
        suite.cases.len()
    );

    let servers: Vec<DnsServer> = (0..suite.scenarios)
        .map(|n| {
            let zone = dir.path().join(format!("zone-{n}.txt"));
            DnsServer::start(&["--zone", zone.to_str().expect("utf-8 path")])
        })
        .collect();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let outputs: Vec<SpfOutput> = runtime.block_on(async {
        // One resolver (and cache) per scenario, as the zones reuse names.
        let auths: Vec<MessageAuthenticator> = servers
            .iter()
            .map(|server| {
                let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
                let resolver = SystemResolver::new(&[addr]).expect("resolver");
                MessageAuthenticator(resolver.hickory().clone())
            })
            .collect();
        let checks = suite.cases.iter().map(|case| {
            let auth = &auths[case.scenario];
            async move {
                let ip: IpAddr = case.ip.parse().expect("the suite's host is an address");
                evaluate(auth, ip, &case.helo, RECEIVER, &case.mailfrom)
                    .await
                    .mail_from
            }
        });
        tokio::time::timeout(SUITE_TIMEOUT, futures_util::future::join_all(checks))
            .await
            .expect("the suite finishes")
    });
    drop(servers);

    let exceptions: BTreeMap<&str, (&str, &str)> = EXCEPTIONS
        .iter()
        .map(|(name, got, why)| (*name, (*got, *why)))
        .collect();
    let (mut passed, mut excepted, mut failures) = (0, 0, Vec::new());
    for (case, output) in suite.cases.iter().zip(&outputs) {
        let got = observed(case, output);
        match (passes(case, output), exceptions.get(case.name.as_str())) {
            (true, None) => passed += 1,
            (true, Some(_)) => failures.push(format!(
                "{}: now passes ({got}); remove it from EXCEPTIONS",
                case.name
            )),
            (false, Some((listed, _))) if *listed == got => excepted += 1,
            (false, _) => failures.push(format!(
                "{} (§{}, helo {:?}, ip {}, mailfrom {:?}): want {:?}{}, got {got}",
                case.name,
                case.spec,
                case.helo,
                case.ip,
                case.mailfrom,
                case.results,
                case.explanation
                    .as_deref()
                    .map(|e| format!(" explanation {e:?}"))
                    .unwrap_or_default(),
            )),
        }
    }
    for name in exceptions.keys() {
        if !suite.cases.iter().any(|c| c.name == *name) {
            failures.push(format!("{name}: listed in EXCEPTIONS but not in the suite"));
        }
    }
    eprintln!(
        "RFC 7208 suite: {} cases, {passed} pass, {excepted} listed exceptions, {} failures",
        suite.cases.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
