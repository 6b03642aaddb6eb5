#!/usr/bin/env python3
"""POP3 and IMAP sessions for tests/cluster_proxy.rs, with Python's stdlib poplib and
imaplib (clients no one here wrote).

  cluster_proxy_client.py pop3 HOST PORT USER PASSWORD [--apop] [--dele N,M]
      logs in (USER/PASS, or APOP with PASSWORD as the secret), RETRs every message,
      DELEs the listed ones, QUITs
  cluster_proxy_client.py imap HOST PORT USER PASSWORD [--expunge N,M]
      LOGIN, SELECT INBOX, FETCH n BODY[] of every message, STORE \\Deleted + EXPUNGE of
      the listed ones, LOGOUT

  cluster_proxy_client.py web HOST PORT USER PASSWORD
      urllib with a cookie jar, as a browser: GET /login, POST the form (following the
      redirect to the INBOX list), GET the list's first message (/read), then POST /logout
      with the page's CSRF token and GET /mail again

Prints one JSON document: {"ok": true, "login": reply, "messages": [base64...],
"capability": post-login CAPABILITY code (IMAP)} or {"ok": false, "error": text}.
"""

import base64
import imaplib
import json
import poplib
import sys

TIMEOUT = 20


def b64(data):
    return base64.b64encode(data).decode("ascii")


def numbers(spec):
    return [int(n) for n in spec.split(",") if n]


def pop3(host, port, user, password, apop, dele):
    client = poplib.POP3(host, port, timeout=TIMEOUT)
    try:
        if apop:
            login = client.apop(user, password)
        else:
            client.user(user)
            login = client.pass_(password)
        count, _ = client.stat()
        messages = []
        for n in range(1, count + 1):
            _, lines, _ = client.retr(n)
            messages.append(b64(b"".join(line + b"\r\n" for line in lines)))
        for n in dele:
            client.dele(n)
        client.quit()
        return {"ok": True, "login": login.decode("latin-1"), "messages": messages}
    except poplib.error_proto as error:
        return {"ok": False, "error": str(error.args[0].decode("latin-1")
                                          if isinstance(error.args[0], bytes) else error)}


def imap(host, port, user, password, expunge):
    client = imaplib.IMAP4(host, port, timeout=TIMEOUT)
    try:
        typ, data = client.login(user, password)
        # imaplib keeps a tagged response's code with the untagged ones.
        _, caps = client.response("CAPABILITY")
        capability = caps[0].decode("latin-1") if caps and caps[0] else None
        login = b" ".join(data).decode("latin-1")
        typ, data = client.select("INBOX")
        count = int(data[0])
        messages = []
        for n in range(1, count + 1):
            typ, data = client.fetch(str(n), "(BODY.PEEK[])")
            messages.append(b64(data[0][1]))
        for n in expunge:
            client.store(str(n), "+FLAGS", "(\\Deleted)")
        if expunge:
            client.expunge()
        client.logout()
        return {"ok": True, "login": login, "messages": messages, "capability": capability}
    except imaplib.IMAP4.error as error:
        return {"ok": False, "error": str(error)}


def web(host, port, user, password):
    import html
    import http.cookiejar
    import re
    import urllib.error
    import urllib.parse
    import urllib.request

    base = "http://%s:%d" % (host, port)
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def call(path, form=None):
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with opener.open(base + path, data=data, timeout=TIMEOUT) as response:
                return response.status, response.geturl(), response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as error:
            return error.code, error.geturl(), error.read().decode("utf-8", "replace")

    def csrf(page):
        found = re.search(r'name="csrf" value="([^"]*)"', page)
        return found.group(1) if found else ""

    _, _, page = call("/login")
    status, url, page = call("/login", {"csrf": csrf(page), "user": user, "password": password})
    cookies = sorted(c.name + "=" + (c.value if c.name == "relay_home" else "*") for c in jar)
    result = {"ok": True, "login_status": status, "url": url, "page": page, "cookies": cookies}
    if status != 200 or "/mail" not in url:
        return result
    # The first message of the list, read as a browser would follow its link.
    link = re.search(r'href="(/read\?[^"]+)"', page)
    if link:
        status, _, text = call(html.unescape(link.group(1)))
        result["read_status"] = status
        result["read"] = text
    status, url, after = call("/logout", {"csrf": csrf(page)})
    result["logout_status"] = status
    result["cookies_after_logout"] = sorted(c.name for c in jar)
    status, url, _ = call("/mail?folder=INBOX")
    result["after_logout_url"] = url
    return result


def main():
    protocol, host, port, user, password = sys.argv[1:6]
    rest = sys.argv[6:]
    if protocol == "web":
        result = web(host, int(port), user, password)
    elif protocol == "pop3":
        dele = numbers(rest[rest.index("--dele") + 1]) if "--dele" in rest else []
        result = pop3(host, int(port), user, password, "--apop" in rest, dele)
    else:
        expunge = numbers(rest[rest.index("--expunge") + 1]) if "--expunge" in rest else []
        result = imap(host, int(port), user, password, expunge)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
