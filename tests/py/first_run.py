#!/usr/bin/env python3
"""The README's first run, third command: send one message over SMTP (smtplib) and fetch it
back over POP3 (poplib), both standard-library clients no one here wrote.

  python3 tests/py/first_run.py USER [--to ADDRESS] [--smtp HOST:PORT] [--pop3 HOST:PORT]

Asks for USER's password (the one `relay init` printed; read from stdin when stdin is not a
terminal), sends a message with a unique subject to ADDRESS (default postmaster@localhost,
which `relay init` aliases to the first user), then logs in to POP3 as USER, finds that
message, prints it and exits 0. The relay may still be starting (`relay serve ... &` just
before): connecting is retried for up to 20 seconds. Exits 1 with the reason otherwise.
"""

import argparse
import getpass
import poplib
import smtplib
import sys
import time
import uuid

WAIT = 20  # seconds: for the relay to start listening, and per response


def address(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def retrying(connect):
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return connect()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("user")
    parser.add_argument("--to", default="postmaster@localhost")
    parser.add_argument("--smtp", type=address, default="127.0.0.1:2525")
    parser.add_argument("--pop3", type=address, default="127.0.0.1:1110")
    args = parser.parse_args()
    if sys.stdin.isatty():
        password = getpass.getpass(f"password of {args.user}: ")
    else:
        password = sys.stdin.readline().strip()

    subject = f"first run {uuid.uuid4()}"
    message = (
        f"From: <{args.user}@localhost>\r\nTo: <{args.to}>\r\nSubject: {subject}\r\n\r\n"
        "Hello from smtplib; fetched with poplib.\r\n"
    )
    smtp = retrying(lambda: smtplib.SMTP(*args.smtp, timeout=WAIT))
    with smtp:
        smtp.sendmail(f"{args.user}@localhost", [args.to], message)
    print(f"sent over SMTP to <{args.to}>: {subject}", file=sys.stderr)

    pop = retrying(lambda: poplib.POP3(*args.pop3, timeout=WAIT))
    try:
        pop.user(args.user)
        pop.pass_(password)
        count, _ = pop.stat()
        for n in range(count, 0, -1):
            lines = pop.retr(n)[1]
            if any(line.decode("utf-8", "replace") == f"Subject: {subject}" for line in lines):
                sys.stdout.write("".join(l.decode("utf-8", "replace") + "\n" for l in lines))
                print(f"fetched over POP3 as {args.user}: message {n} of {count}", file=sys.stderr)
                return 0
        print(f"not in {args.user}'s mailbox ({count} messages)", file=sys.stderr)
        return 1
    finally:
        pop.quit()


if __name__ == "__main__":
    sys.exit(main())
