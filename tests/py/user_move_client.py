#!/usr/bin/env python3
"""IMAP and POP3 views of one user for tests/cluster_user_move.rs, with Python's stdlib
imaplib and poplib (clients no one here wrote).

  user_move_client.py setup HOST PORT USER PASSWORD
      IMAP: CREATE Work, SUBSCRIBE Work, COPY INBOX's second message to Work, APPEND a
      message to Work with flags and a date, STORE \\Seen on INBOX 1 and \\Flagged $Label1
      on INBOX 3, then STORE \\Deleted + EXPUNGE of INBOX 2 (a gap in the UIDs)
  user_move_client.py dump HOST PORT USER PASSWORD
      IMAP: every folder (LIST), subscriptions (LSUB), and per folder (EXAMINE) UIDVALIDITY,
      UIDNEXT and each message's UID, FLAGS, INTERNALDATE and BODY[] (base64)
  user_move_client.py hold HOST PORT USER PASSWORD
      IMAP: LOGIN and SELECT INBOX, print "ready", wait for a line on stdin, then NOOP and
      FETCH 1:* BODY[]: prints the untagged responses NOOP brought and FETCH's status
  user_move_client.py pop3 HOST PORT USER PASSWORD
      POP3: RETR of every message, then UIDL: "uidls" in message-number order, and
      "listing", the UIDL response's lines ("n uidl") as sent

Prints one JSON document; {"ok": false, "error": text} when the server refused.
"""

import base64
import imaplib
import json
import poplib
import re
import sys

TIMEOUT = 20


def b64(data):
    return base64.b64encode(data).decode("ascii")


def check(result):
    typ, data = result
    if typ != "OK":
        raise imaplib.IMAP4.error("%s %r" % (typ, data))
    return data


def setup(client):
    check(client.create("Work"))
    check(client.subscribe("Work"))
    check(client.select("INBOX"))
    check(client.uid("COPY", "2", "Work"))
    check(client.append("Work", "(\\Answered $Project)",
                        imaplib.Time2Internaldate(1700000000),
                        b"From: a@example.test\r\nSubject: appended\r\n\r\nappended to Work\r\n"))
    check(client.uid("STORE", "1", "+FLAGS", "(\\Seen)"))
    check(client.uid("STORE", "3", "+FLAGS", "(\\Flagged $Label1)"))
    check(client.uid("STORE", "2", "+FLAGS", "(\\Deleted)"))
    check(client.expunge())
    return {"ok": True}


def dump(client):
    folders = {}
    names = []
    for line in check(client.list('""', "*")):
        found = re.match(rb'\((.*?)\) "(.*?)" "?([^"]*)"?$', line)
        if found and b"\\Noselect" not in found.group(1):
            names.append(found.group(3).decode())
    subscribed = []
    for line in check(client.lsub('""', "*")):
        if line:
            found = re.match(rb'\((.*?)\) "(.*?)" "?([^"]*)"?$', line)
            if found:
                subscribed.append(found.group(3).decode())
    for name in sorted(names):
        data = check(client.select('"%s"' % name, readonly=True))
        _, validity = client.response("UIDVALIDITY")
        _, uidnext = client.response("UIDNEXT")
        messages = []
        if int(data[0]) > 0:
            data = check(client.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])"))
            for item in data:
                if not isinstance(item, tuple):
                    continue
                head, body = item
                uid = int(re.search(rb"UID (\d+)", head).group(1))
                flags = re.search(rb"FLAGS \((.*?)\)", head).group(1).decode().split()
                flags = sorted(f for f in flags if f != "\\Recent")
                date = re.search(rb'INTERNALDATE "(.*?)"', head).group(1).decode()
                messages.append({"uid": uid, "flags": flags, "date": date, "body": b64(body)})
        folders[name] = {
            "uidvalidity": int(validity[0]),
            "uidnext": int(uidnext[0]),
            "messages": sorted(messages, key=lambda m: m["uid"]),
        }
    return {"ok": True, "folders": folders, "subscribed": sorted(subscribed)}


def hold(client):
    check(client.select("INBOX"))
    print("ready", flush=True)
    sys.stdin.readline()
    typ, _ = client.noop()
    untagged = {k: [v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in vs]
                for k, vs in client.untagged_responses.items()}
    try:
        typ_fetch, data = client.fetch("1:*", "(BODY.PEEK[])")
        fetch = [typ_fetch, [d.decode("latin-1") if isinstance(d, bytes) else str(d) for d in data]]
    except imaplib.IMAP4.error as error:
        fetch = ["NO", [str(error)]]
    return {"ok": True, "noop": typ, "untagged": untagged, "fetch": fetch}


def imap(command, host, port, user, password):
    client = imaplib.IMAP4(host, port, timeout=TIMEOUT)
    try:
        check(client.login(user, password))
        if command == "setup":
            result = setup(client)
        elif command == "hold":
            result = hold(client)
        else:
            result = dump(client)
        client.logout()
        return result
    except imaplib.IMAP4.error as error:
        return {"ok": False, "error": str(error)}


def pop3(host, port, user, password):
    client = poplib.POP3(host, port, timeout=TIMEOUT)
    try:
        client.user(user)
        client.pass_(password)
        count, _ = client.stat()
        messages = []
        for n in range(1, count + 1):
            _, lines, _ = client.retr(n)
            messages.append(b64(b"".join(line + b"\r\n" for line in lines)))
        _, uidls, _ = client.uidl()
        client.quit()
        return {"ok": True, "messages": messages,
                "uidls": [u.decode().split()[1] for u in uidls],
                "listing": [u.decode() for u in uidls]}
    except poplib.error_proto as error:
        text = error.args[0]
        return {"ok": False, "error": text.decode("latin-1") if isinstance(text, bytes) else str(text)}


def main():
    command, host, port, user, password = sys.argv[1:6]
    if command == "pop3":
        result = pop3(host, int(port), user, password)
    else:
        result = imap(command, host, int(port), user, password)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
