#!/usr/bin/env python3
"""Independent check of relay's delivery status notifications: Python's stdlib `email`.

Usage: dsn_check.py FILE

Parses FILE as a message and prints what a DSN reader would see, one fact per line:

    type <content type of the message>
    report-type <the report-type parameter>
    header <name>: <value>               top-level From, To, Subject, Auto-Submitted, ...
    part <i> <content type>              the parts of the multipart/report, in order
    message-field <name>: <value>        the per-message block of the delivery-status
    recipient <i> <name>: <value>        each per-recipient block
    enclosed-header <name>: <value>      Subject and Message-ID of a returned message/rfc822
    returned-headers <n>                 header fields in a text/rfc822-headers part
    defects <n>                          parser defects anywhere in the message
    ok

Exits 1 (with the reason on stderr) when the message is not a multipart/report DSN with
the three parts RFC 3464 / RFC 6522 describe. Uses only the standard library
(src/queue/dsn/tests.rs runs it).
"""
import email
import email.policy
import sys


def fail(reason):
    sys.stderr.write(f"not a DSN: {reason}\n")
    sys.exit(1)


def main(path):
    with open(path, "rb") as f:
        msg = email.message_from_bytes(f.read(), policy=email.policy.default)
    out = []
    defects = list(msg.defects)

    ctype = msg.get_content_type()
    out.append(f"type {ctype}")
    if ctype != "multipart/report":
        fail(f"content type {ctype}")
    report_type = msg.get_param("report-type")
    out.append(f"report-type {report_type}")
    for name in ("From", "To", "Subject", "Auto-Submitted", "MIME-Version"):
        if msg[name] is None:
            fail(f"no {name} header")
        out.append(f"header {name}: {msg[name]}")
    for name in ("Date", "Message-ID"):
        if msg[name] is None:
            fail(f"no {name} header")
    # Parsing the Date is part of the check: a malformed date raises or is a defect.
    if msg["Date"].datetime is None:
        fail("unparsable Date")

    parts = msg.get_payload()
    if not isinstance(parts, list) or len(parts) != 3:
        fail(f"expected 3 parts, got {len(parts) if isinstance(parts, list) else 'a leaf'}")
    for i, part in enumerate(parts):
        out.append(f"part {i} {part.get_content_type()}")
        defects.extend(part.defects)
    if parts[0].get_content_type() != "text/plain":
        fail("first part is not text/plain")
    parts[0].get_content()  # decodes with the declared charset, or raises

    status = parts[1]
    if status.get_content_type() not in (
        "message/delivery-status",
        "message/global-delivery-status",
    ):
        fail("second part is not a delivery-status")
    blocks = status.get_payload()
    if not isinstance(blocks, list) or len(blocks) < 2:
        fail("delivery-status needs a per-message block and at least one recipient block")
    for block in blocks:
        defects.extend(block.defects)
    for name, value in blocks[0].items():
        out.append(f"message-field {name}: {value}")
    for i, block in enumerate(blocks[1:]):
        if block["Final-Recipient"] is None or block["Action"] is None or block["Status"] is None:
            fail(f"recipient block {i} lacks Final-Recipient, Action or Status")
        for name, value in block.items():
            out.append(f"recipient {i} {name}: {value}")

    original = parts[2]
    kind = original.get_content_type()
    if kind in ("message/rfc822", "message/global"):
        enclosed = original.get_payload()
        if isinstance(enclosed, list):
            enclosed = enclosed[0]
        defects.extend(enclosed.defects)
        for name in ("Subject", "Message-ID"):
            if enclosed[name] is not None:
                out.append(f"enclosed-header {name}: {enclosed[name]}")
    elif kind in ("text/rfc822-headers", "message/global-headers"):
        text = original.get_payload(decode=True).decode("utf-8", "replace")
        parsed = email.message_from_string(text, policy=email.policy.default)
        out.append(f"returned-headers {len(parsed.keys())}")
    else:
        fail(f"third part is {kind}")

    out.append(f"defects {len(defects)}")
    for d in defects:
        out.append(f"defect {type(d).__name__}")
    out.append("ok")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.stderr.write("usage: dsn_check.py FILE\n")
        sys.exit(2)
    main(sys.argv[1])
