#!/usr/bin/python3
"""Reads a stored message on stdin and prints, as one JSON document, every
Authentication-Results field parsed by python3-authres (the RFC 8601 parser that
python3-authheaders builds on): a list of {"authserv_id", "results": [{"method", "result",
"properties": {"ptype.name": value}}]}, in field order. Header fields end at the first empty
line; folded lines are unfolded. Used by tests/sender_checks.rs, which makes the assertions.
Run with /usr/bin/python3 (Debian's authres is installed there).
"""
import json
import sys

import authheaders  # noqa: F401  (the package the brief names; its parser is authres)
import authres

raw = sys.stdin.buffer.read().decode("utf-8", "replace")
head = raw.split("\r\n\r\n", 1)[0]
fields = []
for line in head.split("\r\n"):
    if line[:1] in (" ", "\t") and fields:
        fields[-1] += "\r\n" + line
    else:
        fields.append(line)
out = []
for field in fields:
    name = field.split(":", 1)[0]
    if name.strip().lower() != "authentication-results":
        continue
    parsed = authres.AuthenticationResultsHeader.parse(field)
    out.append(
        {
            "authserv_id": parsed.authserv_id,
            "results": [
                {
                    "method": r.method,
                    "result": r.result,
                    "properties": {f"{p.type}.{p.name}": p.value for p in r.properties},
                }
                for r in parsed.results
            ],
        }
    )
print(json.dumps(out))
