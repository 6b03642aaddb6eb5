"""Converts the SPF council's RFC 7208 test suite (YAML) for tests/spf_suite.rs.

Usage: /usr/bin/python3 spf_suite.py SUITE.yml OUTDIR
Writes OUTDIR/zone-N.txt (scenario N's zonedata in tests/py/dns_server.py's --zone format)
and OUTDIR/cases.json (every test: scenario, name, spec, helo, ip, mailfrom, the accepted
results, the expected explanation or null). Needs PyYAML (Debian python3-yaml).

The zonedata is read the way pyspf's test driver (test/testspf.py) serves it:
  - an SPF entry is served as type SPF (99) and, when the name has no TXT entry of its own,
    also as TXT: the suite relies on that duplication for everything but "Selecting records";
  - "TXT: NONE" / "SPF: NONE" mean no record of that type (and suppress the duplication);
  - TIMEOUT: the records listed before it are answered, every other type gets no reply
    (dns_server.py's "timeout"); entries after it are never reached;
  - a list value is one record of several character-strings. Strings are octets: the
    suite's non-ASCII characters are the latin-1 reading of the bytes meant.
"""
import json
import os
import sys

import yaml


def octets_ok(text):
    return all(ord(c) < 256 for c in text)


def strings(value):
    """One TXT/SPF record's character-strings as a JSON list (latin-1 octets)."""
    parts = value if isinstance(value, list) else [value]
    out = []
    for part in parts:
        part = str(part)
        if not octets_ok(part):
            part = part.encode("utf-8").decode("latin-1")
        # Longer than one character-string: split as a publisher would.
        out.extend([part[i:i + 255] for i in range(0, len(part), 255)] or [""])
    return json.dumps(out)


def zone_lines(name, entries):
    has_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
    lines, generated = [], []
    for entry in entries:
        if entry == "TIMEOUT":
            lines.append("timeout")
            break
        for kind, value in entry.items():
            if value == "NONE":
                continue
            if kind in ("TXT", "SPF"):
                lines.append(kind.lower() + "s:" + strings(value))
                if kind == "SPF" and not has_txt:
                    generated.append("txts:" + strings(value))
            elif kind == "MX":
                pref, exchange = value
                lines.append("mx:%d:%s" % (int(pref), exchange))
            elif kind in ("A", "AAAA", "PTR", "CNAME"):
                lines.append(kind.lower() + ":" + str(value))
            else:
                raise SystemExit("unknown record kind %r at %s" % (kind, name))
    if "timeout" not in lines:
        lines.extend(generated)
    else:
        # pyspf appends the generated TXT records after the TIMEOUT, where they are never
        # reached: a TXT query for such a name times out.
        pass
    return ["%s=%s" % (name, line) for line in lines]


def main():
    suite, outdir = sys.argv[1], sys.argv[2]
    os.makedirs(outdir, exist_ok=True)
    cases = []
    with open(suite, "rb") as f:
        scenarios = list(yaml.safe_load_all(f))
    for number, scenario in enumerate(scenarios):
        lines = ["# " + scenario.get("description", "").replace("\n", " ")]
        for name, entries in (scenario.get("zonedata") or {}).items():
            lines.extend(zone_lines(name, entries))
        with open(os.path.join(outdir, "zone-%d.txt" % number), "w", encoding="ascii") as z:
            z.write("\n".join(lines) + "\n")
        for name, test in scenario["tests"].items():
            result = test["result"]
            cases.append({
                "scenario": number,
                "scenario_description": scenario.get("description", ""),
                "name": name,
                "spec": str(test.get("spec", "")),
                "helo": str(test["helo"]),
                "ip": str(test["host"]),
                "mailfrom": str(test["mailfrom"]),
                "results": result if isinstance(result, list) else [result],
                "explanation": test.get("explanation"),
            })
    with open(os.path.join(outdir, "cases.json"), "w", encoding="ascii") as f:
        json.dump({"scenarios": len(scenarios), "cases": cases}, f, indent=1)


main()
