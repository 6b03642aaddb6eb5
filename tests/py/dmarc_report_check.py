#!/usr/bin/python3
"""Reads one DMARC aggregate report message (a scripted sink's file: envelope lines, a blank
line, the data; or the bare message with --bare) with Python's own email parser, takes its
application/gzip attachment, decompresses it, validates the XML with `xmllint --schema`
against the given XSD and prints one JSON object: the envelope, the header fields, the
attachment's file name, xmllint's exit status and message, and the XML itself.

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
    print(json.dumps(out))


if __name__ == "__main__":
    main()
