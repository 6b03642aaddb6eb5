#!/usr/bin/env python3
"""The mail side of the browser tests (tests/web_browser.rs), on Python's stdlib clients
(smtplib, poplib, imaplib): independent of the relay and of the browser.

usage: mailtool.py COMMAND ...
  send PORT FROM TO FILE         one message (the bytes of FILE) over SMTP
  fill PORT TO COUNT CONNS       COUNT small messages to TO over CONNS parallel SMTP
                                 connections, many per connection; prints the seconds
  pop3 PORT USER PASSWORD        every message of USER's maildrop, as JSON (base64)
  imap PORT USER PASSWORD FOLDER every message of FOLDER, as JSON (base64)

Errors raise: the traceback on stderr and exit status 1 are what the Rust test shows.
"""

import base64
import concurrent.futures
import imaplib
import json
import poplib
import smtplib
import sys
import time

HOST = "127.0.0.1"
TIMEOUT = 30


def send(port, sender, rcpt, file):
    with open(file, "rb") as f:
        message = f.read()
    with smtplib.SMTP(HOST, int(port), timeout=TIMEOUT) as smtp:
        smtp.ehlo("mailtool.test")
        refused = smtp.sendmail(sender, [rcpt], message)
        if refused:
            raise RuntimeError(f"refused: {refused}")


def fill_one(port, rcpt, first, count):
    with smtplib.SMTP(HOST, int(port), timeout=TIMEOUT) as smtp:
        smtp.ehlo("mailtool.test")
        for n in range(first, first + count):
            # A minute apart, so the list's dates differ and page order is visible.
            minute = n % 60
            hour = (n // 60) % 24
            day = 1 + (n // 1440) % 28
            message = (
                f"From: Sender {n % 97} <sender{n % 97}@remote.test>\r\n"
                f"To: {rcpt}\r\n"
                f"Subject: Bulk message {n:05d}\r\n"
                f"Date: Mon, {day} Nov 2026 {hour:02d}:{minute:02d}:00 +0000\r\n"
                f"Message-ID: <bulk-{n}@remote.test>\r\n"
                "\r\n"
                f"Body of message {n}.\r\n"
            ).encode()
            smtp.sendmail(f"sender{n % 97}@remote.test", [rcpt], message)


def fill(port, rcpt, count, conns):
    count, conns = int(count), int(conns)
    started = time.monotonic()
    share = -(-count // conns)
    with concurrent.futures.ThreadPoolExecutor(conns) as pool:
        jobs = []
        for c in range(conns):
            first = c * share
            n = min(share, count - first)
            if n > 0:
                jobs.append(pool.submit(fill_one, port, rcpt, first, n))
        for job in jobs:
            job.result()
    print(json.dumps({"seconds": time.monotonic() - started}))


def pop3(port, user, password):
    pop = poplib.POP3(HOST, int(port), timeout=TIMEOUT)
    try:
        pop.user(user)
        pop.pass_(password)
        count, _ = pop.stat()
        out = []
        for n in range(1, count + 1):
            _, lines, _ = pop.retr(n)
            out.append(base64.b64encode(b"\r\n".join(lines) + b"\r\n").decode())
    finally:
        pop.quit()
    print(json.dumps(out))


def imap(port, user, password, folder):
    conn = imaplib.IMAP4(HOST, int(port), timeout=TIMEOUT)
    try:
        conn.login(user, password)
        conn.select(f'"{folder}"', readonly=True)
        _, data = conn.uid("SEARCH", None, "ALL")
        out = []
        for uid in data[0].split():
            _, parts = conn.uid("FETCH", uid, "(BODY.PEEK[])")
            out.append(base64.b64encode(parts[0][1]).decode())
        conn.logout()
    except Exception:
        conn.shutdown()
        raise
    print(json.dumps(out))


def main():
    commands = {"send": send, "fill": fill, "pop3": pop3, "imap": imap}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    main()
