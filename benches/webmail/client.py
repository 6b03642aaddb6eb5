#!/usr/bin/env python3
"""The Python side of benches/webmail_compare.sh (stdlib only): fills a mailbox over IMAP,
logs in to relay's web mail or to Roundcube the way a browser does, drives the send flow,
and holds many logged-in sessions. Prints one JSON object on stdout.

usage: client.py COMMAND ARGS...
  append HOST PORT USER PASSWORD COUNT SIZE CONNECTIONS
        APPENDs COUNT messages (SIZE bytes of body, message i dated BASE + i minutes, so
        the newest is the last) over CONNECTIONS IMAP connections, the last 200 in order
        over one; the same mail each time
  login KIND URL USER PASSWORD
        KIND relay|roundcube: logs in; prints the Cookie header, the CSRF token and the UID of
        the first message of the INBOX list (the newest), with its subject
  send KIND URL USER PASSWORD TO SECONDS THREADS
        THREADS sessions, each looping compose page → send for SECONDS; prints sends/s and
        the latency quantiles of the whole compose+send pair
  sessions KIND URL USER PASSWORD COUNT
        logs in COUNT sessions (kept, not logged out); prints how many succeeded
"""

import concurrent.futures
import email.utils
import html
import http.client
import imaplib
import json
import re
import sys
import threading
import time
import urllib.parse

BASE_DATE = 1_767_225_600  # 2026-01-01 00:00:00 UTC
WORDS = ("relay spool message queue delivery server client mailbox segment commit "
         "inbox folder thread session cookie token latency").split()


def subject_of(i):
    return f"Bench message {i:05d} about {WORDS[i % len(WORDS)]}"


def message(i, size):
    date = BASE_DATE + 60 * i
    head = (f"From: Sender {i % 97} <sender{i % 97}@remote.test>\r\n"
            f"To: user0@bench.test\r\n"
            f"Subject: {subject_of(i)}\r\n"
            f"Date: {email.utils.formatdate(date, usegmt=True)}\r\n"
            f"Message-ID: <bench.{i}@remote.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    lines, n, k = [], 0, i
    while n < size:
        words = []
        for _ in range(10):
            words.append(WORDS[k % len(WORDS)])
            k = (k * 1103515245 + 12345) & 0x7FFFFFFF
        line = " ".join(words)
        lines.append(line)
        n += len(line) + 2
    return (head + "\r\n".join(lines) + "\r\n").encode(), date


def append(host, port, user, password, count, size, connections):
    count, size, connections = int(count), int(size), int(connections)
    start = time.monotonic()

    # The last TAIL messages go in order over one connection after the rest, so arrival
    # order and date order agree on the first pages whichever order a server lists by.
    tail = min(count, 200)
    bulk = count - tail

    def worker(w):
        imap = imaplib.IMAP4(host, int(port))
        imap.login(user, password)
        done = 0
        for i in (range(bulk, count) if w is None else range(w, bulk, connections)):
            data, date = message(i, size)
            typ, _ = imap.append("INBOX", None, imaplib.Time2Internaldate(date), data)
            if typ != "OK":
                raise RuntimeError(f"APPEND {i}: {typ}")
            done += 1
        imap.logout()
        return done

    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        total = sum(pool.map(worker, range(connections)))
    total += worker(None)
    elapsed = time.monotonic() - start
    return {"appended": total, "seconds": round(elapsed, 2), "msgs_per_s": round(total / elapsed, 1)}


class Browser:
    """One browser: its own cookies, a fresh connection per request (as wrk's are kept
    alive, the per-request connection cost is the client's, not measured)."""

    def __init__(self, url):
        self.url = urllib.parse.urlsplit(url)
        self.cookies = {}
        self.conn = None

    def request(self, method, path, form=None, headers=None):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=60)
            h = dict(headers or {})
            if self.cookies:
                h["Cookie"] = self.cookie_header()
            body = None
            if form is not None:
                body = urllib.parse.urlencode(form)
                h["Content-Type"] = "application/x-www-form-urlencoded"
            try:
                self.conn.request(method, path, body=body, headers=h)
                resp = self.conn.getresponse()
                data = resp.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
                continue
            for line in resp.headers.get_all("Set-Cookie") or []:
                name, _, rest = line.partition("=")
                value = rest.split(";")[0]
                if "Max-Age=0" in line or value in ("", "deleted") or "expires=Thu, 01-Jan-1970" in line:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = value
            if resp.headers.get("Connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
            return resp.status, resp.headers, data.decode("utf-8", "replace")

    def cookie_header(self):
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())


def location_path(headers):
    loc = headers.get("Location") or ""
    parts = urllib.parse.urlsplit(loc)
    path = parts.path or "/"
    if path.startswith("./"):
        path = path[1:]
    return path + ("?" + parts.query if parts.query else "")


# --- relay ---------------------------------------------------------------------------------

def relay_csrf(page):
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    return m.group(1) if m else ""


def relay_login(b, user, password):
    _, _, page = b.request("GET", "/login")
    status, headers, _ = b.request("POST", "/login", {"csrf": relay_csrf(page), "user": user, "password": password})
    if status != 303 or not b.cookies.get("relay_session"):
        raise RuntimeError(f"relay login: {status}")
    _, _, inbox = b.request("GET", "/mail?folder=INBOX")
    return inbox


def relay_info(url, user, password):
    b = Browser(url)
    inbox = relay_login(b, user, password)
    links = re.findall(r'<a href="(/read\?[^"]+)">([^<]*)</a>', inbox)
    if not links:
        raise RuntimeError("relay: no message in the INBOX list")
    target, subject = html.unescape(links[0][0]), html.unescape(links[0][1])
    return {"cookie": b.cookie_header(), "csrf": relay_csrf(inbox), "list_path": "/mail?folder=INBOX",
            "view_path": target, "subject": subject, "list_rows": len(links)}


def relay_send_once(b, to, n):
    _, _, form = b.request("GET", "/compose")
    status, _, body = b.request("POST", "/send", {"csrf": relay_csrf(form), "to": to, "cc": "",
                                                  "subject": f"bench send {n}", "body": "A short note.\r\nBye.\r\n"})
    return status == 200 and "stored and on its way" in body


# --- Roundcube -----------------------------------------------------------------------------

def rc_token(page):
    m = re.search(r'"request_token":"([^"]+)"', page) or re.search(r'name="_token" value="([^"]+)"', page)
    return m.group(1) if m else ""


def rc_login(b, user, password):
    _, _, page = b.request("GET", "/")
    form = {"_token": rc_token(page), "_task": "login", "_action": "login", "_timezone": "UTC",
            "_url": "", "_user": user, "_pass": password}
    status, headers, _ = b.request("POST", "/?_task=login", form)
    if status != 302 or "roundcube_sessauth" not in b.cookies:
        raise RuntimeError(f"roundcube login: {status} {headers.get('Location')}")
    _, _, page = b.request("GET", "/?_task=mail&_mbox=INBOX")
    token = rc_token(page)
    if not token:
        raise RuntimeError("roundcube: no request token after login")
    return token


def rc_info(url, user, password):
    b = Browser(url)
    token = rc_login(b, user, password)
    list_path = "/?_task=mail&_action=list&_mbox=INBOX&_page=1&_remote=1"
    status, _, body = b.request("GET", list_path, headers={"X-Roundcube-Request": token})
    if status != 200:
        raise RuntimeError(f"roundcube list: {status}")
    # The rows are JS calls in the JSON answer: add_message_row(UID, {...subject...}).
    rows = re.findall(r'add_message_row\((\d+),\{(.*?)\}', json.loads(body).get("exec", ""))
    if not rows:
        raise RuntimeError("roundcube: no message in the INBOX list")
    uid = rows[0][0]
    subject = re.search(r'"subject":"([^"]*)"', rows[0][1])
    return {"cookie": b.cookie_header(), "token": token, "list_path": list_path,
            "view_path": f"/?_task=mail&_action=show&_uid={uid}&_mbox=INBOX",
            "subject": json.loads('"' + subject.group(1) + '"') if subject else "", "list_rows": len(rows)}


def rc_send_once(b, token, to, n):
    status, headers, _ = b.request("GET", "/?_task=mail&_action=compose")
    path = location_path(headers) if status == 302 else None
    if not path:
        return False
    _, _, page = b.request("GET", path)
    compose_id = re.search(r'"compose_id":"([^"]+)"', page)
    identity = re.search(r'name="_from"[^>]*>\s*<option value="(\d+)"', page)
    if not compose_id or not identity:
        return False
    form = {"_token": token, "_task": "mail", "_action": "send", "_id": compose_id.group(1),
            "_attachments": "", "_from": identity.group(1), "_to": to, "_cc": "", "_bcc": "",
            "_replyto": "", "_followupto": "", "_subject": f"bench send {n}", "_draft": "",
            "_is_html": "0", "_framed": "1", "_store_target": "Sent", "_priority": "0",
            "_message": "A short note.\r\nBye.\r\n"}
    status, _, body = b.request("POST", "/?_task=mail&_lang=en_US&_framed=1", form)
    return status == 200 and "sent_successfully" in body


# --- commands ------------------------------------------------------------------------------

def info(kind, url, user, password):
    return relay_info(url, user, password) if kind == "relay" else rc_info(url, user, password)


def quantile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def send(kind, url, user, password, to, seconds, threads):
    seconds, threads = float(seconds), int(threads)
    lock = threading.Lock()
    latencies, failures = [], [0]
    start = threading.Event()

    def worker(w):
        b = Browser(url)
        token = rc_login(b, user, password) if kind == "roundcube" else relay_login(b, user, password)
        start.wait()
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            t0 = time.monotonic()
            ok = rc_send_once(b, token, to, n) if kind == "roundcube" else relay_send_once(b, to, n)
            took = time.monotonic() - t0
            with lock:
                if ok:
                    latencies.append(took)
                else:
                    failures[0] += 1
            n += 1

    pool = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    start.set()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - t0
    ms = lambda v: round(v * 1000, 2) if v is not None else None
    return {"sends": len(latencies), "failed": failures[0], "seconds": round(elapsed, 2),
            "per_s": round(len(latencies) / elapsed, 2), "p50_ms": ms(quantile(latencies, 0.5)),
            "p99_ms": ms(quantile(latencies, 0.99))}


def sessions(kind, url, user, password, count):
    ok = failed = 0
    t0 = time.monotonic()
    for _ in range(int(count)):
        b = Browser(url)
        try:
            rc_login(b, user, password) if kind == "roundcube" else relay_login(b, user, password)
            ok += 1
        except (RuntimeError, OSError, http.client.HTTPException):
            failed += 1
        if b.conn:
            b.conn.close()
    return {"sessions": ok, "failed": failed, "seconds": round(time.monotonic() - t0, 1)}


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    out = {"append": append, "login": info, "send": send, "sessions": sessions}[cmd](*args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
