#!/usr/bin/env python3
"""A browser stand-in for tests/web_mail.rs, on Python's own http.client (a client no one
here wrote): it logs in through the form, follows the pages a person would click, keeps
cookies itself, and prints what it saw as one JSON object.

usage: web_client.py URL SCENARIO ARGS...   (URL: http://127.0.0.1:PORT or https://…)
  security USER PASSWORD        headers, cookie flags, CSRF refusals, logout
  throttle USER COUNT           COUNT wrong passwords: the statuses
  read USER PASSWORD SUBJECT    the list, then the message with SUBJECT, then the list again
  send USER PASSWORD TO SUBJECT BODY   compose (mailto-style URL), send
  act USER PASSWORD SUBJECT     flag the message with SUBJECT, then delete it (to Trash)
  expire USER PASSWORD SECONDS  the inbox right after login and again SECONDS later
  browse USER PASSWORD IMAPPORT QUERY   APPEND an old-dated message over IMAP, then every
                                page of INBOX and every page of a search for QUERY
  manage USER PASSWORD          move "to archive" to Archive, delete "to trash", empty Trash
  imap USER PASSWORD IMAPPORT FOLDER...  the subjects in each folder, over IMAP (imaplib)
  parts USER PASSWORD SUBJECT   the message with SUBJECT: its frame (and with remote images),
                                the frame's images, every attachment link downloaded
  (--cafile PEM: the CA to trust for https)
"""

import html
import http.client
import json
import re
import ssl
import sys
import time
import urllib.parse


class Browser:
    def __init__(self, base, cafile=None):
        self.url = urllib.parse.urlsplit(base)
        self.cookies = {}
        self.cafile = cafile

    def request(self, method, path, form=None, cookies=True):
        if self.url.scheme == "https":
            context = ssl.create_default_context(cafile=self.cafile)
            conn = http.client.HTTPSConnection(self.url.hostname, self.url.port, timeout=30, context=context)
        else:
            conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=30)
        headers = {}
        if cookies and self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        text = data.decode("utf-8", "replace")
        set_cookies = resp.headers.get_all("Set-Cookie") or []
        for line in set_cookies:
            name, _, rest = line.partition("=")
            value = rest.split(";")[0]
            if "Max-Age=0" in line:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        conn.close()
        return {
            "status": resp.status,
            "headers": {k.lower(): v for k, v in resp.headers.items()},
            "set_cookie": set_cookies,
            "location": resp.headers.get("Location"),
            "body": text,
            "bytes": data,
        }

    def login(self, user, password):
        form = self.request("GET", "/login")
        token = csrf(form["body"])
        return self.request("POST", "/login", {"csrf": token, "user": user, "password": password})


def csrf(page):
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    return m.group(1) if m else ""


def security(b, user, password):
    out = {}
    login_page = b.request("GET", "/login")
    out["login_page"] = {"status": login_page["status"], "headers": login_page["headers"]}
    b.request("GET", "/login")
    wrong = b.request("POST", "/login", {"csrf": csrf(b.request("GET", "/login")["body"]), "user": user, "password": password + "x"})
    out["wrong"] = {"status": wrong["status"], "set_cookie": wrong["set_cookie"]}
    no_token = b.request("POST", "/login", {"user": user, "password": password})
    out["login_without_token"] = no_token["status"]
    right = b.login(user, password)
    out["right"] = {"status": right["status"], "location": right["location"], "set_cookie": right["set_cookie"]}
    inbox = b.request("GET", "/mail?folder=INBOX")
    out["inbox"] = {"status": inbox["status"], "headers": inbox["headers"]}
    out["style"] = b.request("GET", "/static/style.css")["headers"]
    out["logout_without_token"] = b.request("POST", "/logout", {})["status"]
    out["after_refused_logout"] = b.request("GET", "/mail?folder=INBOX")["status"]
    saved = dict(b.cookies)
    out["send_without_token"] = b.request("POST", "/send", {"to": "bob@example.test", "subject": "x", "body": "y"})["status"]
    logout = b.request("POST", "/logout", {"csrf": csrf(inbox["body"])})
    out["logout"] = {"status": logout["status"], "location": logout["location"]}
    # The cookie from before the logout, replayed: the server has forgotten it.
    b.cookies = saved
    replay = b.request("GET", "/mail?folder=INBOX")
    out["replayed_cookie"] = {"status": replay["status"], "location": replay["location"]}
    return out


def throttle(b, user, count):
    statuses = []
    for _ in range(int(count)):
        statuses.append(b.login(user, "wrong-password")["status"])
    return {"statuses": statuses}


def read(b, user, password, subject):
    b.login(user, password)
    inbox = b.request("GET", "/mail?folder=INBOX")
    links = re.findall(r'<a href="(/read\?[^"]+)">([^<]*)</a>', inbox["body"])
    target = [h for h, s in links if html.unescape(s) == subject]
    out = {"list_status": inbox["status"], "subjects": [html.unescape(s) for _, s in links],
           "unread_before": unread(inbox["body"])}
    if target:
        page = b.request("GET", html.unescape(target[0]))
        out["message_status"] = page["status"]
        out["message_body"] = page["body"]
        out["message_headers"] = page["headers"]
        frame = re.search(r'<iframe [^>]*src="([^"]+)"', page["body"])
        if frame:
            got = b.request("GET", html.unescape(frame.group(1)))
            out["frame_body"] = got["body"]
            out["frame_headers"] = got["headers"]
        after = b.request("GET", "/mail?folder=INBOX")
        out["unread_after"] = unread(after["body"])
    return out


def unread(page):
    m = re.search(r'>INBOX <span class="count" title="unread">(\d+)</span>', page)
    return int(m.group(1)) if m else 0


def send(b, user, password, to, subject, body):
    b.login(user, password)
    mailto = urllib.parse.quote(f"mailto:{to}", safe="")
    form = b.request("GET", f"/compose?to={mailto}")
    prefilled = re.search(r'id="to" name="to" value="([^"]*)"', form["body"])
    sent = b.request("POST", "/send", {"csrf": csrf(form["body"]), "to": to, "cc": "", "subject": subject, "body": body})
    sent_folder = b.request("GET", "/mail?folder=Sent")
    return {"prefilled": html.unescape(prefilled.group(1)) if prefilled else None,
            "status": sent["status"], "body": sent["body"],
            "sent_folder": sent_folder["body"]}


def act(b, user, password, subject):
    b.login(user, password)
    inbox = b.request("GET", "/mail?folder=INBOX")
    links = re.findall(r'<a href="(/read\?[^"]+)">([^<]*)</a>', inbox["body"])
    target = html.unescape([h for h, s in links if html.unescape(s) == subject][0])
    uid = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)["uid"][0]
    page = b.request("GET", target)
    token = csrf(page["body"])
    out = {"forged": b.request("POST", "/act", {"csrf": "0", "folder": "INBOX", "uid": uid, "action": "flag"})["status"]}
    flag = b.request("POST", "/act", {"csrf": token, "folder": "INBOX", "uid": uid, "action": "flag"})
    out["flag"] = {"status": flag["status"], "location": flag["location"]}
    out["flagged_marks"] = b.request("GET", "/mail?folder=INBOX")["body"].count('title="flagged"')
    trash = b.request("POST", "/act", {"csrf": token, "folder": "INBOX", "uid": uid, "action": "trash"})
    out["trash"] = {"status": trash["status"], "location": trash["location"]}
    out["inbox_after"] = b.request("GET", "/mail?folder=INBOX")["body"]
    out["trash_folder"] = b.request("GET", "/mail?folder=Trash")["body"]
    return out


def expire(b, user, password, seconds):
    login = b.login(user, password)
    first = b.request("GET", "/mail?folder=INBOX")
    time.sleep(float(seconds))
    later = b.request("GET", "/mail?folder=INBOX")
    return {"login": {"status": login["status"], "set_cookie": login["set_cookie"]},
            "first": {"status": first["status"], "headers": first["headers"]},
            "later": {"status": later["status"], "location": later["location"]}}


def subjects_of(page):
    links = re.findall(r'<a href="(/read\?[^"]+)">([^<]*)</a>', page)
    return [html.unescape(s) for _, s in links]


def next_link(page):
    m = re.search(r'<a href="([^"]+)" rel="next">', page)
    return html.unescape(m.group(1)) if m else None


def all_pages(b, path):
    """Follows the "Older" links from PATH: the subjects of each page, the first page."""
    pages, first = [], None
    while path and len(pages) < 50:
        page = b.request("GET", path)
        first = first or page
        pages.append(subjects_of(page["body"]))
        path = next_link(page["body"])
    return pages, first


def browse(b, user, password, imap_port, query):
    import imaplib
    imap = imaplib.IMAP4("127.0.0.1", int(imap_port))
    imap.login(user, password)
    old = b"From: Old <old@remote.test>\r\nSubject: appended old\r\nDate: Wed, 1 Jan 2020 10:00:00 +0000\r\n\r\nnothing to see\r\n"
    typ, _ = imap.append("INBOX", None, imaplib.Time2Internaldate(1577872800), old)
    imap.logout()
    b.login(user, password)
    pages, _ = all_pages(b, "/mail?folder=INBOX")
    search = "/mail?" + urllib.parse.urlencode({"folder": "INBOX", "q": query})
    found, first = all_pages(b, search)
    total = re.search(r'<small>(\d+) found</small>', first["body"])
    return {"append": typ, "pages": pages, "search_pages": found,
            "search_total": int(total.group(1)) if total else None,
            "search_status": first["status"]}


def uid_of(b, folder, subject):
    page = b.request("GET", "/mail?" + urllib.parse.urlencode({"folder": folder}))
    links = re.findall(r'<a href="(/read\?[^"]+)">([^<]*)</a>', page["body"])
    target = html.unescape([h for h, s in links if html.unescape(s) == subject][0])
    return target, urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)["uid"][0]


def manage(b, user, password):
    b.login(user, password)
    out = {}
    target, uid = uid_of(b, "INBOX", "to archive")
    page = b.request("GET", target)
    token = csrf(page["body"])
    out["move_options"] = [html.unescape(o) for o in re.findall(r'<option value="([^"]*)">', page["body"])]
    out["move_forged"] = b.request("POST", "/move", {"csrf": "0", "folder": "INBOX", "uid": uid, "to": "Archive"})["status"]
    moved = b.request("POST", "/move", {"csrf": token, "folder": "INBOX", "uid": uid, "to": "Archive"})
    out["move"] = {"status": moved["status"], "location": moved["location"]}
    out["move_nowhere"] = b.request("POST", "/move", {"csrf": token, "folder": "INBOX", "uid": uid, "to": "No such"})["status"]
    out["inbox"] = subjects_of(b.request("GET", "/mail?folder=INBOX")["body"])
    out["archive"] = subjects_of(b.request("GET", "/mail?folder=Archive")["body"])
    _, uid = uid_of(b, "INBOX", "to trash")
    trash = b.request("POST", "/act", {"csrf": token, "folder": "INBOX", "uid": uid, "action": "trash"})
    out["trash"] = trash["status"]
    trash_page = b.request("GET", "/mail?folder=Trash")["body"]
    out["trash_before"] = subjects_of(trash_page)
    out["empty_button"] = 'action="/empty-trash"' in trash_page
    out["empty_button_in_inbox"] = 'action="/empty-trash"' in b.request("GET", "/mail?folder=INBOX")["body"]
    out["empty_forged"] = b.request("POST", "/empty-trash", {"csrf": "0"})["status"]
    out["trash_after_forged"] = subjects_of(b.request("GET", "/mail?folder=Trash")["body"])
    emptied = b.request("POST", "/empty-trash", {"csrf": token})
    out["empty"] = {"status": emptied["status"], "location": emptied["location"]}
    out["trash_after"] = subjects_of(b.request("GET", "/mail?folder=Trash")["body"])
    return out


def imap_folders(b, user, password, imap_port, *folders):
    import imaplib
    imap = imaplib.IMAP4("127.0.0.1", int(imap_port))
    imap.login(user, password)
    out = {}
    for folder in folders:
        typ, data = imap.select(folder, readonly=True)
        subjects = []
        count = int(data[0]) if typ == "OK" else 0
        typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])") if count else ("OK", [])
        for item in data or []:
            if isinstance(item, tuple):
                line = item[1].decode("utf-8", "replace").strip()
                subjects.append(line.partition(":")[2].strip())
        out[folder] = subjects
    imap.logout()
    return out


def fetched(page):
    """A response as the scenario reports it: status, headers, body (base64 for bytes)."""
    import base64
    return {"status": page["status"], "headers": page["headers"],
            "body": page["body"], "base64": base64.b64encode(page["bytes"]).decode()}


def parts(b, user, password, subject):
    b.login(user, password)
    target, _ = uid_of(b, "INBOX", subject)
    page = b.request("GET", target)
    out = {"page": {"status": page["status"], "headers": page["headers"], "body": page["body"]}}
    frames = [html.unescape(m) for m in re.findall(r'<iframe ([^>]*)>', page["body"])]
    out["iframes"] = frames
    out["frames"] = []
    for attrs in frames:
        src = re.search(r'src="([^"]+)"', attrs).group(1)
        frame = b.request("GET", src)
        images = [html.unescape(s) for s in re.findall(r'<img src="([^"]+)"', frame["body"])]
        out["frames"].append({"src": src, "frame": fetched(frame),
                              "images": [fetched(b.request("GET", i)) for i in images if i.startswith("/")]})
    show = re.search(r'<a href="([^"]+)" class="show-remote">', page["body"])
    if show:
        again = b.request("GET", html.unescape(show.group(1)))
        src = html.unescape(re.search(r'<iframe [^>]*src="([^"]+)"', again["body"]).group(1))
        out["remote_frame"] = fetched(b.request("GET", src))
        out["remote_src"] = src
    out["attachments"] = []
    for href, name in re.findall(r'<li><a href="(/part\?[^"]+)" download>([^<]*)</a>', page["body"]):
        got = b.request("GET", html.unescape(href))
        out["attachments"].append({"name": html.unescape(name), "href": html.unescape(href), "got": fetched(got)})
    # Without the session cookie nothing of the message comes back.
    if out["attachments"]:
        saved = dict(b.cookies)
        b.cookies = {}
        out["part_without_session"] = b.request("GET", out["attachments"][0]["href"])["status"]
        b.cookies = saved
    return out


def main():
    base, scenario, *args = sys.argv[1:]
    cafile = None
    if "--cafile" in args:
        i = args.index("--cafile")
        cafile = args[i + 1]
        del args[i:i + 2]
    b = Browser(base, cafile)
    result = {"security": security, "throttle": throttle, "read": read, "send": send, "expire": expire, "act": act,
                "browse": browse, "manage": manage, "imap": imap_folders,
                "parts": parts}[scenario](b, *args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
