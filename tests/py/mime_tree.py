#!/usr/bin/env python3
"""Differential oracle for relay's MIME parser: Python's stdlib `email` package.

Usage: mime_tree.py FILE...

For each file, prints its part tree in depth-first order, one part per line:

    FILE <name>
    <depth> TAB <content type> TAB <decoded payload as base64, or '-' for a container>
    END

The depth counts container levels the way relay does: an enclosed message/rfc822 is one
level below its part. Payloads are `get_payload(decode=True)` (transfer encoding undone).
Uses only the standard library, so any python3 can run it (tests/mime_differential.rs).
"""
import base64
import email
import email.policy
import sys


def walk(part, depth, out):
    ctype = part.get_content_type().lower()
    if part.is_multipart():
        out.append(f"{depth}\t{ctype}\t-")
        for child in part.get_payload():
            walk(child, depth + 1, out)
    else:
        payload = part.get_payload(decode=True)
        if payload is None:
            payload = b""
        out.append(f"{depth}\t{ctype}\t{base64.b64encode(payload).decode('ascii')}")


def main(paths):
    out = []
    for path in paths:
        with open(path, "rb") as f:
            # message_from_bytes keeps CRLF (message_from_binary_file reads through
            # universal newlines and would turn CRLF into LF).
            msg = email.message_from_bytes(f.read(), policy=email.policy.compat32)
        out.append(f"FILE {path}")
        walk(msg, 0, out)
        out.append("END")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
