#!/usr/bin/python3
"""Reads one DMARC aggregate report message (a scripted sink's file: envelope lines, a blank
line, the data; or the bare message with --bare) with Python's own email parser, takes its
application/gzip attachment, decompresses it, validates the XML with `xmllint --schema`
against the given XSD and prints one JSON object: the envelope, the header fields, the
attachment's file name, xmllint's exit status and message, the XML itself, and its
records as ElementTree reads them ("records": source_ip, count, disposition, the evaluated
dkim/spf, envelope_from, header_from, and the auth_results' dkim list and spf).

usage: dmarc_report_check.py MESSAGE_FILE SCHEMA [--bare]
"""
import email
import email.policy
import gzip
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree


def records(xml):
    """Each <record> of the report as a flat dict of texts."""
    root = ElementTree.fromstring(xml)
    text = lambda node, path: (node.findtext(path) or "").strip()
    out = []
    for record in root.findall("record"):
        spf = record.find("auth_results/spf")
        out.append({
            "source_ip": text(record, "row/source_ip"),
            "count": int(text(record, "row/count") or -1),
            "disposition": text(record, "row/policy_evaluated/disposition"),
            "dkim": text(record, "row/policy_evaluated/dkim"),
            "spf": text(record, "row/policy_evaluated/spf"),
            "envelope_from": text(record, "identifiers/envelope_from"),
            "header_from": text(record, "identifiers/header_from"),
            "auth_dkim": [
                "%s %s %s" % (text(d, "domain"), text(d, "selector"), text(d, "result"))
                for d in record.findall("auth_results/dkim")
            ],
            "auth_spf": "%s %s %s" % (text(spf, "domain"), text(spf, "scope"), text(spf, "result"))
            if spf is not None else "",
        })
    return out


def main():
    path, schema = sys.argv[1], sys.argv[2]
    data = open(path, "rb").read()
    envelope = []
    if "--bare" not in sys.argv[3:]:
        head, data = data.split(b"\n\n", 1)
        envelope = head.decode().splitlines()
    message = email.message_from_bytes(data, policy=email.policy.default)
    out = {
        "envelope": envelope,
        "from": str(message["From"]),
        "to": str(message["To"]),
        "subject": str(message["Subject"]),
        "auto_submitted": str(message["Auto-Submitted"]),
        "dkim_signature": message["DKIM-Signature"] is not None,
        "attachments": [],
    }
    xml = None
    for part in message.walk():
        if part.get_content_type() == "application/gzip":
            out["attachments"].append(part.get_filename())
            xml = gzip.decompress(part.get_payload(decode=True))
    if xml is None:
        out["xmllint_rc"] = -1
        out["records"] = []
        print(json.dumps(out))
        return
    with tempfile.NamedTemporaryFile(suffix=".xml", delete=False) as f:
        f.write(xml)
        name = f.name
    try:
        run = subprocess.run(
            ["xmllint", "--noout", "--schema", schema, name],
            capture_output=True,
            text=True,
        )
    finally:
        os.unlink(name)
    out["xmllint_rc"] = run.returncode
    out["xmllint"] = (run.stdout + run.stderr).strip()
    out["xml"] = xml.decode()
    out["records"] = records(xml)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
