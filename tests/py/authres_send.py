#!/usr/bin/python3
"""Sends one message with Python's smtplib (an SMTP client no one here wrote) and prints
the server's final reply as JSON: {"code": n, "text": "..."} (for the end of data, or for
whichever command was refused first). Used by tests/sender_checks.rs.

Usage: authres_send.py PORT HELO MAIL_FROM RCPT MESSAGE_FILE
MAIL_FROM may be "" for the null sender.
"""
import json
import smtplib
import sys

port, helo, mail_from, rcpt, path = sys.argv[1:6]
with open(path, "rb") as f:
    message = f.read()
with smtplib.SMTP("127.0.0.1", int(port), local_hostname=helo, timeout=60) as client:
    client.ehlo(helo)
    code, text = client.mail(mail_from)
    if code == 250:
        code, text = client.rcpt(rcpt)
    if code == 250:
        code, text = client.data(message)
    print(json.dumps({"code": code, "text": text.decode("utf-8", "replace")}))
