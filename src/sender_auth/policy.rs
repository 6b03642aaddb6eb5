//! What the results of the checks do to a message: accept (marked), file it in the local
//! recipients' Junk folder, refuse (550) or defer (451). Sans-IO: results in, action out, so every combination is a unit test.
//!
//! Order of the rules, first match wins:
//! 1. the whole check ran out of time → `dns_failure` (a slow DNS is a DNS failure);
//! 2. DMARC passed → accept: the From domain vouched for the message, whatever SPF said
//!    about a forwarder;
//! 3. DMARC failed and the domain's policy, after `pct` sampling (RFC 7489 §6.6.4: a message
//!    outside the sample gets the next weaker policy), is `reject` or `quarantine` →
//!    `dmarc_reject` / `dmarc_quarantine`; DMARC decided, SPF is not consulted;
//! 4. a DNS failure in any check (SPF, a DKIM key, the DMARC record) → `dns_failure`
//!    (RFC 7208 §2.6.6, RFC 7489 §6.6.3): never a silent pass;
//! 5. SPF `fail` (`-all`) for the checked identity → `spf_fail`;
//! 6. anything else → accept.

use serde::{Deserialize, Serialize};

use super::report::AuthResult;

/// What a failed policy does to the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFail {
    /// `550 5.7.1` (SPF: `550 5.7.23`) at the end of data.
    Reject,
    /// Delivered, with the result in `Authentication-Results` for the reader's filters.
    Mark,
    /// Delivered (marked) into each local recipient's Junk folder (the folder with the
    /// `\Junk` role, created when missing) instead of INBOX.
    Junk,
}

/// What a DNS failure (SERVFAIL, timeout) during the checks does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDnsFailure {
    /// `451 4.7.0`: the sender retries later, when the DNS answers again.
    Tempfail,
    /// Delivered, marked `temperror`.
    Mark,
}

/// The actions chosen by configuration (`[verify]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub dmarc_reject: OnFail,
    pub dmarc_quarantine: OnFail,
    pub spf_fail: OnFail,
    pub dns_failure: OnDnsFailure,
}

/// The DMARC result (RFC 7489 §11.2 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmarcStatus {
    /// No record for the From domain (or no single From domain).
    None,
    Pass,
    Fail,
    TempError,
    PermError,
}

/// The policy a DMARC record requests for this message's From domain (`p=`, or `sp=` for
/// a subdomain, already chosen).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Requested {
    None,
    Quarantine,
    Reject,
}

/// The results the decision reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdicts {
    /// The whole check did not finish within `[verify] timeout`.
    pub timed_out: bool,
    pub dmarc: DmarcStatus,
    pub requested: Requested,
    /// The message fell inside the record's `pct` sample (always true for `pct=100`).
    pub sampled: bool,
    /// The SPF result of the identity DMARC uses: MAIL FROM, or HELO for the null sender.
    pub spf: AuthResult,
    /// Some DKIM signature's key lookup failed temporarily.
    pub dkim_temperror: bool,
}

/// Why a message is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Dmarc,
    Spf,
}

/// What happens to the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Accept,
    /// Accepted, filed in the Junk folder of the local recipients.
    Junk(Refusal),
    Refuse(Refusal),
    Defer,
}

impl Action {
    /// The report's disposition: what we did (a message we could not quarantine and
    /// delivered is `none`).
    pub fn disposition(self) -> super::report::Disposition {
        match self {
            Action::Refuse(_) => super::report::Disposition::Reject,
            Action::Junk(_) => super::report::Disposition::Quarantine,
            Action::Accept | Action::Defer => super::report::Disposition::None,
        }
    }
}

/// The policy DMARC applies after `pct` sampling: outside the sample, `reject` becomes
/// `quarantine` and `quarantine` becomes `none` (RFC 7489 §6.6.4).
pub fn applied(requested: Requested, sampled: bool) -> Requested {
    match (requested, sampled) {
        (requested, true) => requested,
        (Requested::Reject, false) => Requested::Quarantine,
        (Requested::Quarantine | Requested::None, false) => Requested::None,
    }
}

/// Whether a message falls inside a `pct` sample, from a uniform `roll` in 0..100.
pub fn in_sample(pct: u8, roll: u8) -> bool {
    pct >= 100 || roll < pct
}

/// The action for `verdicts` under `policy` (see the module doc for the rule order).
pub fn decide(policy: &Policy, verdicts: &Verdicts) -> Action {
    let dns = match policy.dns_failure {
        OnDnsFailure::Tempfail => Action::Defer,
        OnDnsFailure::Mark => Action::Accept,
    };
    let on_fail = |on: OnFail, why: Refusal| match on {
        OnFail::Reject => Action::Refuse(why),
        OnFail::Mark => Action::Accept,
        OnFail::Junk => Action::Junk(why),
    };
    if verdicts.timed_out {
        return dns;
    }
    match verdicts.dmarc {
        DmarcStatus::Pass => return Action::Accept,
        DmarcStatus::Fail => match applied(verdicts.requested, verdicts.sampled) {
            Requested::Reject => return on_fail(policy.dmarc_reject, Refusal::Dmarc),
            Requested::Quarantine => return on_fail(policy.dmarc_quarantine, Refusal::Dmarc),
            Requested::None => {}
        },
        DmarcStatus::TempError => return dns,
        DmarcStatus::None | DmarcStatus::PermError => {}
    }
    if verdicts.spf == AuthResult::TempError || verdicts.dkim_temperror {
        return dns;
    }
    if verdicts.spf == AuthResult::Fail {
        return on_fail(policy.spf_fail, Refusal::Spf);
    }
    Action::Accept
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON_FAIL: [OnFail; 3] = [OnFail::Reject, OnFail::Mark, OnFail::Junk];
    const ON_DNS: [OnDnsFailure; 2] = [OnDnsFailure::Tempfail, OnDnsFailure::Mark];
    const DMARC: [DmarcStatus; 5] = [
        DmarcStatus::None,
        DmarcStatus::Pass,
        DmarcStatus::Fail,
        DmarcStatus::TempError,
        DmarcStatus::PermError,
    ];
    const REQUESTED: [Requested; 3] = [Requested::None, Requested::Quarantine, Requested::Reject];
    const SPF: [AuthResult; 7] = [
        AuthResult::None,
        AuthResult::Pass,
        AuthResult::Fail,
        AuthResult::SoftFail,
        AuthResult::Neutral,
        AuthResult::TempError,
        AuthResult::PermError,
    ];

    /// The rules written out independently of `decide`'s control flow, as a table per input.
    fn expected(policy: &Policy, v: &Verdicts) -> Action {
        let dns = if policy.dns_failure == OnDnsFailure::Tempfail {
            Action::Defer
        } else {
            Action::Accept
        };
        let reject_if = |on: OnFail, why| match on {
            OnFail::Reject => Action::Refuse(why),
            OnFail::Junk => Action::Junk(why),
            OnFail::Mark => Action::Accept,
        };
        let effective = match (v.requested, v.sampled) {
            (r, true) => r,
            (Requested::Reject, false) => Requested::Quarantine,
            _ => Requested::None,
        };
        let dmarc_decides = v.dmarc == DmarcStatus::Fail && effective != Requested::None;
        if v.timed_out {
            dns
        } else if v.dmarc == DmarcStatus::Pass {
            Action::Accept
        } else if dmarc_decides && effective == Requested::Reject {
            reject_if(policy.dmarc_reject, Refusal::Dmarc)
        } else if dmarc_decides {
            reject_if(policy.dmarc_quarantine, Refusal::Dmarc)
        } else if v.dmarc == DmarcStatus::TempError
            || v.spf == AuthResult::TempError
            || v.dkim_temperror
        {
            dns
        } else if v.spf == AuthResult::Fail {
            reject_if(policy.spf_fail, Refusal::Spf)
        } else {
            Action::Accept
        }
    }

    #[test]
    fn every_combination_follows_the_rules() {
        let mut seen = std::collections::HashSet::new();
        let mut count = 0;
        for dmarc_reject in ON_FAIL {
            for dmarc_quarantine in ON_FAIL {
                for spf_fail in ON_FAIL {
                    for dns_failure in ON_DNS {
                        let policy = Policy {
                            dmarc_reject,
                            dmarc_quarantine,
                            spf_fail,
                            dns_failure,
                        };
                        for timed_out in [false, true] {
                            for dmarc in DMARC {
                                for requested in REQUESTED {
                                    for sampled in [false, true] {
                                        for spf in SPF {
                                            for dkim_temperror in [false, true] {
                                                let v = Verdicts {
                                                    timed_out,
                                                    dmarc,
                                                    requested,
                                                    sampled,
                                                    spf,
                                                    dkim_temperror,
                                                };
                                                let got = decide(&policy, &v);
                                                assert_eq!(
                                                    got,
                                                    expected(&policy, &v),
                                                    "{policy:?} {v:?}"
                                                );
                                                seen.insert(format!("{got:?}"));
                                                count += 1;
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(count, 27 * 2 * 2 * 5 * 3 * 2 * 7 * 2);
        // Accept, Defer, Refuse and Junk, each for DMARC and SPF where they apply.
        assert_eq!(seen.len(), 6, "{seen:?}");
    }

    fn defaults() -> Policy {
        Policy {
            dmarc_reject: OnFail::Reject,
            dmarc_quarantine: OnFail::Junk,
            spf_fail: OnFail::Reject,
            dns_failure: OnDnsFailure::Tempfail,
        }
    }

    fn verdicts(dmarc: DmarcStatus, requested: Requested, spf: AuthResult) -> Verdicts {
        Verdicts {
            timed_out: false,
            dmarc,
            requested,
            sampled: true,
            spf,
            dkim_temperror: false,
        }
    }

    #[test]
    fn named_cases() {
        let p = defaults();
        // A forged From for a p=reject domain.
        assert_eq!(
            decide(
                &p,
                &verdicts(DmarcStatus::Fail, Requested::Reject, AuthResult::Pass)
            ),
            Action::Refuse(Refusal::Dmarc)
        );
        // p=none: delivered.
        assert_eq!(
            decide(
                &p,
                &verdicts(DmarcStatus::Fail, Requested::None, AuthResult::None)
            ),
            Action::Accept
        );
        // A forwarder breaks SPF, the aligned DKIM signature still passes DMARC.
        assert_eq!(
            decide(
                &p,
                &verdicts(DmarcStatus::Pass, Requested::Reject, AuthResult::Fail)
            ),
            Action::Accept
        );
        // -all without DMARC.
        assert_eq!(
            decide(
                &p,
                &verdicts(DmarcStatus::None, Requested::None, AuthResult::Fail)
            ),
            Action::Refuse(Refusal::Spf)
        );
        assert_eq!(
            decide(
                &p,
                &verdicts(DmarcStatus::None, Requested::None, AuthResult::SoftFail)
            ),
            Action::Accept
        );
        // A DNS failure is never a silent pass.
        assert_eq!(
            decide(
                &p,
                &verdicts(DmarcStatus::None, Requested::None, AuthResult::TempError)
            ),
            Action::Defer
        );
        // Quarantine goes to Junk by default, whatever SPF said (DMARC decided).
        assert_eq!(
            decide(
                &p,
                &verdicts(DmarcStatus::Fail, Requested::Quarantine, AuthResult::Fail)
            ),
            Action::Junk(Refusal::Dmarc)
        );
        // pct: outside the sample, reject is only quarantine.
        let mut outside = verdicts(DmarcStatus::Fail, Requested::Reject, AuthResult::None);
        outside.sampled = false;
        assert_eq!(decide(&p, &outside), Action::Junk(Refusal::Dmarc));
        // SPF -all filed as junk when so configured.
        let junk_spf = Policy {
            spf_fail: OnFail::Junk,
            ..p
        };
        assert_eq!(
            decide(
                &junk_spf,
                &verdicts(DmarcStatus::None, Requested::None, AuthResult::Fail)
            ),
            Action::Junk(Refusal::Spf)
        );
        assert_eq!(
            Action::Junk(Refusal::Dmarc).disposition(),
            crate::sender_auth::report::Disposition::Quarantine
        );
    }

    #[test]
    fn pct_sampling() {
        assert!(in_sample(100, 99));
        assert!(!in_sample(0, 0));
        assert!(in_sample(50, 49));
        assert!(!in_sample(50, 50));
        assert_eq!(applied(Requested::Reject, false), Requested::Quarantine);
        assert_eq!(applied(Requested::Quarantine, false), Requested::None);
        assert_eq!(applied(Requested::Reject, true), Requested::Reject);
    }
}
