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

// The harness macro that runs a test per engine is not used: no relay runs here.
#[allow(unused_macros)]
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

/// The suite's cases where mail-auth 0.13.3 (with hickory 0.26 underneath) answers otherwise:
/// (case name, what we give as `result` or `result/explanation`, why). Each is a deviation of
/// the library this relay evaluates SPF with, not of this test's DNS; none turns a `fail` the
/// suite expects into a `pass` for an address the record does not list, except the IPv4/ip6
/// ones ([`V4MAPPED`], a `/0` IPv6 network), [`EXISTS_AAAA`], [`CIDR`] and
/// [`SEPARATORS`].
const EXCEPTIONS: &[(&str, &str, &str)] = &[
    ("invalid-domain-empty-label", "temperror", NAME_TEMPERROR),
    ("invalid-domain-long", "temperror", NAME_TEMPERROR),
    ("invalid-domain-long-via-macro", "temperror", NAME_TEMPERROR),
    ("a-bad-domain", "temperror", NAME_TEMPERROR),
    ("a-null", "temperror", NAME_TEMPERROR),
    ("a-bad-toplabel", "temperror", NAME_TEMPERROR),
    ("mx-bad-domain", "temperror", NAME_TEMPERROR),
    ("mx-null", "temperror", NAME_TEMPERROR),
    ("mx-bad-toplab", "temperror", NAME_TEMPERROR),
    ("macro-mania-in-domain", "temperror", NAME_TEMPERROR),
    ("invalid-hello-macro", "temperror", NAME_TEMPERROR),
    ("hello-domain-literal", "temperror", NAME_TEMPERROR),
    ("invalid-domain", "fail", TOPLABEL),
    ("a-numeric", "neutral", TOPLABEL),
    ("a-numeric-toplabel", "neutral", TOPLABEL),
    ("a-only-toplabel", "neutral", TOPLABEL),
    ("a-only-toplabel-trailing-dot", "neutral", TOPLABEL),
    ("mx-numeric-top-label", "neutral", TOPLABEL),
    ("a-colon-domain", "permerror", COLON),
    ("a-colon-domain-ip4mapped", "permerror", COLON),
    ("mx-colon-domain", "permerror", COLON),
    ("mx-colon-domain-ip4mapped", "permerror", COLON),
    ("a-bad-cidr4", "fail", CIDR),
    ("a-bad-cidr6", "fail", CIDR),
    ("a-dual-cidr-ip4-err", "pass", CIDR),
    ("mx-bad-cidr4", "fail", CIDR),
    ("mx-bad-cidr6", "fail", CIDR),
    ("cidr4-33", "pass", CIDR),
    ("cidr4-032", "pass", CIDR),
    ("cidr6-129", "neutral", CIDR),
    ("cidr6-0-ip4", "pass", V4MAPPED),
    ("cidr6-ip4", "pass", V4MAPPED),
    ("exists-ip6only", "pass", EXISTS_AAAA),
    ("ptr-match-implicit", "fail", PTR_EXACT),
    ("ptr-match-ip6", "fail", PTR_EXACT),
    ("p-macro-multiple", "temperror", P_MACRO_DOT),
    ("p-macro-ip4-novalid", "fail/connect from ", P_MACRO_EXP),
    ("p-macro-ip4-valid", "fail/connect from ", P_MACRO_EXP),
    ("p-macro-ip6-novalid", "fail/connect from ", P_MACRO_EXP),
    ("p-macro-ip6-valid", "fail/connect from ", P_MACRO_EXP),
    ("multitxt1", "fail", MULTIPLE),
    ("multitxt2", "fail", MULTIPLE),
    ("non-ascii-policy", "fail", NON_ASCII),
    ("non-ascii-mech", "fail", NON_ASCII),
    ("control-char-policy", "pass", SEPARATORS),
    ("badip4", "pass", SEPARATORS),
    ("null-text", "temperror", NULL_TXT),
    ("modifier-charset-good", "permerror", MODIFIER_NAME),
    ("invalid-modifier", "neutral", MODIFIER_NAME),
    ("empty-modifier-name", "neutral", MODIFIER_NAME),
    ("redirect-after-mechanisms2", "permerror", MODIFIER_NAME),
    ("redirect-syntax-error", "neutral", MODIFIER_SYNTAX),
    ("exp-syntax-error", "neutral", MODIFIER_SYNTAX),
    ("void-over-limit", "neutral", VOID_LIMIT),
    ("exp-multiple-txt", "fail/Answer a fool according to his folly.", EXP_TXT),
    ("two-exp-records", "fail/one", EXP_TXT),
    ("non-ascii-exp", "fail/\u{feff}Explanation", EXP_TXT),
    ("domain-name-truncation", "fail/DEFAULT", EXP_TRUNCATION),
    ("v-macro-ip6", "fail/cafe:babe::1 is queried as 1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.e.b.a.b.e.f.a.c.ip6.arpa", EXP_CASE),
    ("upper-macro", "fail/http://example.com/why.html?l=~jack%26jill%3dup-a_b3.c", EXP_CASE),
];

/// Operators: a malformed name in a published record is a temperror here, so with
/// `dns_failure = "tempfail"` such mail is deferred (451), never passed.
const NAME_TEMPERROR: &str = "a target name that cannot be a DNS name (an empty label, a label \
    over 63 octets, NUL, ':', spaces, a domain literal from %{h}) makes hickory refuse to build \
    the query, and mail-auth maps that error to temperror; RFC 7208 §4.3/§4.8/§7.1 want \
    permerror or fail";
const TOPLABEL: &str = "mail-auth does not check a domain-spec's top label (RFC 7208 §7.1: not \
    all-numeric, not alone): the name is looked up, not found, and the mechanism does not match";
const COLON: &str = "mail-auth's parser refuses ':' inside a domain-spec, which RFC 7208 §7.1 \
    allows (any visible character but '%'), so the record is a permerror";
const CIDR: &str = "mail-auth does not refuse invalid CIDR lengths (ip4 /33 or /032, ip6 /129, \
    a/33, a//129, a/24/64 for a/24//64) as RFC 7208 §5.6 asks; it matches with them";
const V4MAPPED: &str = "mail-auth compares an IPv4 client with IPv6 networks and AAAA records \
    through its IPv4-mapped form (::ffff:a.b.c.d), so an ip6 /0 network matches every IPv4 \
    client; RFC 7208 §5.6: ip6 never matches an IPv4 client";
const EXISTS_AAAA: &str = "mail-auth's exists: falls back to an AAAA query when there is no A \
    record; RFC 7208 §5.7 says the lookup is A even for an IPv6 client";
const PTR_EXACT: &str = "mail-auth compares the validated PTR name, which hickory gives with its \
    trailing dot, with the target name, so a name equal to the target (not a subdomain of it) \
    never matches (RFC 7208 §5.5)";
const P_MACRO_DOT: &str = "%{p} expands to the PTR name with hickory's trailing dot \
    (mx.example.com.), so %{p}.should.example.com has an empty label and fails as temperror \
    (the suite: pass or softfail)";
const P_MACRO_EXP: &str = "%{p} in an explanation expands to nothing: mail-auth resolves the \
    validated name only for mechanisms, not for exp=; the result itself (fail) is right";
const MULTIPLE: &str = "mail-auth uses the first TXT record that parses as SPF and never \
    looks for a second one, so two SPF records are not the permerror RFC 7208 §4.5 asks for; \
    the answer depends on the order of the records";
const NON_ASCII: &str = "mail-auth accepts non-ASCII octets in a record, where RFC 7208 §3.1 \
    allows 7-bit ASCII only (permerror); the octets end up in a term that does not match";
const SEPARATORS: &str = "mail-auth splits terms at any whitespace (CR, LF too), where RFC \
    7208 §4.6.1 allows only spaces, so a record with a control character is read instead of \
    being a permerror";
const NULL_TXT: &str = "a TXT record with no character-strings (the suite's SPF: [], illegal \
    on the wire, RFC 1035 §3.3.14) makes hickory reject the whole answer, so the lookup is a \
    temperror, not the suite's pass from the other record; nothing crashes, which is what \
    the case is about";
const MODIFIER_NAME: &str = "mail-auth's modifier-name syntax differs from RFC 7208 §A (name = \
    ALPHA *(ALPHA / DIGIT / '-' / '_' / '.')): it refuses '.' in a name (and so the record \
    that redirect= points to in redirect-after-mechanisms2) and accepts a name that is empty \
    or starts with a digit";
const MODIFIER_SYNTAX: &str = "mail-auth accepts redirect= and exp= whose domain-spec is not one \
    ('-all'), where RFC 7208 §6.1/§6.2 want a permerror";
const VOID_LIMIT: &str = "mail-auth has no limit on void lookups (RFC 7208 §4.6.4: SHOULD limit \
    them to two, then permerror)";
const EXP_TXT: &str = "mail-auth uses the first of several TXT records for exp=, and non-ASCII \
    text, where RFC 7208 §6.2 says to ignore the explanation then (the result, fail, is right)";
const EXP_TRUNCATION: &str = "mail-auth does not shorten a macro-expanded name over 253 octets \
    by dropping left labels (RFC 7208 §7.3), so the exp= lookup fails and the explanation is \
    the default (the result, fail, is right)";
const EXP_CASE: &str = "only the letter case of the explanation differs: mail-auth writes the \
    IPv6 nibbles of %{i} and the %-escapes of %{L} in lower case, the suite expects upper case \
    (RFC 7208 §7.3's own example writes nibbles in lower case)";

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
    let mut suite = convert(dir.path());
    assert!(
        suite.cases.len() >= 200,
        "only {} cases read",
        suite.cases.len()
    );
    // SPF_SUITE_CASE=name runs that case alone and prints the queries it made.
    let only = std::env::var("SPF_SUITE_CASE").ok();
    if let Some(only) = &only {
        suite.cases.retain(|case| case.name == *only);
    }

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
    if only.is_some() {
        for (case, output) in suite.cases.iter().zip(&outputs) {
            eprintln!("{}: {output:?}", case.name);
            eprintln!("queries: {:?}", servers[case.scenario].queries());
        }
        return;
    }
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
