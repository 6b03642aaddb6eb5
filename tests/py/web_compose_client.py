#!/usr/bin/env python3
"""A browser stand-in for tests/web_compose.rs on Python's stdlib: it logs in through the
form, reads the compose form as a browser would (every input and textarea it holds), posts
it as multipart/form-data with files the way browsers encode them, looks at Sent and Drafts
over IMAP (imaplib), and prints what it saw as one JSON object. `decode` takes a stored
message apart with the email package (an independent MIME parser).

usage: web_compose_client.py URL SCENARIO ARGS...
  send USER PASSWORD IMAP_PORT SPEC.json   compose with SPEC's fields and files, send
  answer USER PASSWORD MODE SUBJECT TO      MODE reply|reply_all|forward on the INBOX message
                                            with SUBJECT; TO (may be "") replaces To; send
  draft USER PASSWORD IMAP_PORT SPEC.json  save SPEC as a draft, reopen it, send it
  mailto USER PASSWORD URI                 the compose form for /compose?uri=URI
  decode - FILE                            the message in FILE, parsed
  (--cafile PEM: the CA to trust for https; IMAP_PORT "-": no IMAP look)
Bytes (bodies, attachments) are given as latin-1 strings, one char per byte.
"""

import email
import email.policy
import html
import http.client
import imaplib
import json
import re
import ssl
import sys
import urllib.parse
import uuid


class Browser:
    def __init__(self, base, cafile=None):
        self.url = urllib.parse.urlsplit(base)
        self.cookies = {}
        self.cafile = cafile

    def request(self, method, path, body=None, content_type=None):
        if self.url.scheme == "https":
            context = ssl.create_default_context(cafile=self.cafile)
            conn = http.client.HTTPSConnection(self.url.hostname, self.url.port, timeout=60, context=context)
        else:
            conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=60)
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if content_type:
            headers["Content-Type"] = content_type
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        for line in resp.headers.get_all("Set-Cookie") or []:
            name, _, rest = line.partition("=")
            if "Max-Age=0" in line:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = rest.split(";")[0]
        conn.close()
        return {"status": resp.status, "location": resp.headers.get("Location"), "body": text}

    def login(self, user, password):
        page = self.request("GET", "/login")
        form = urllib.parse.urlencode({"csrf": csrf(page["body"]), "user": user, "password": password})
        return self.request("POST", "/login", form, "application/x-www-form-urlencoded")

    def post_multipart(self, path, fields, files):
        """fields: [(name, value)], files: [(name, filename, content_type, bytes)], encoded
        as a browser does (UTF-8 names, CRLF, one part per file)."""
        boundary = "----relaytest" + uuid.uuid4().hex
        out = bytearray()
        for name, value in fields:
            out += f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n".encode()
            out += value.encode("utf-8") + b"\r\n"
        for name, filename, ctype, data in files:
            quoted = filename.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
            out += f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{quoted}\"\r\nContent-Type: {ctype}\r\n\r\n".encode("utf-8")
            out += data + b"\r\n"
        out += f"--{boundary}--\r\n".encode()
        return self.request("POST", path, bytes(out), f"multipart/form-data; boundary={boundary}")


def csrf(page):
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    return m.group(1) if m else ""


def compose_form(page):
    """The compose form's fields as a browser would post them, and its shape."""
    m = re.search(r'<form method="post" action="/send"[^>]*>(.*?)</form>', page, re.S)
    form = m.group(0) if m else ""
    fields = {}
    for tag in re.findall(r"<input[^>]*>", form):
        name = re.search(r'name="([^"]*)"', tag)
        if not name or 'type="file"' in tag:
            continue
        value = re.search(r'value="([^"]*)"', tag)
        fields[html.unescape(name.group(1))] = html.unescape(value.group(1)) if value else ""
    for name, text in re.findall(r'<textarea[^>]*name="([^"]*)"[^>]*>(.*?)</textarea>', form, re.S):
        fields[name] = html.unescape(text)
    kept = [html.unescape(x) for x in re.findall(r"<li>([^<]*)</li>", form)]
    return {
        "fields": fields,
        "multipart": 'enctype="multipart/form-data"' in form,
        "file_input": bool(re.search(r'<input[^>]*type="file"[^>]*name="attachment"[^>]*multiple', form)),
        "buttons": re.findall(r'<button type="submit" name="action" value="([a-z]+)"', form),
        "kept": kept,
    }


def post_form(b, fields, action, files=()):
    pairs = [(k, v) for k, v in fields.items()] + [("action", action)]
    return b.post_multipart("/send", pairs, list(files))


def load_spec(path):
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    files = []
    for item in spec.get("files", []):
        with open(item["path"], "rb") as f:
            files.append(("attachment", item["name"], item.get("type", "application/octet-stream"), f.read()))
    return spec, files


def imap_folder(port, user, password, folder):
    """Every message of FOLDER: its flags and bytes."""
    if port == "-":
        return []
    m = imaplib.IMAP4("127.0.0.1", int(port))
    m.login(user, password)
    typ, _ = m.select(folder, readonly=True)
    out = []
    if typ == "OK":
        typ, data = m.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
        for item in data or []:
            if isinstance(item, tuple):
                flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
                out.append({"flags": flags.group(1).decode() if flags else "",
                            "raw": item[1].decode("latin-1")})
    m.logout()
    return out


def send(b, user, password, imap_port, spec_path):
    spec, files = load_spec(spec_path)
    b.login(user, password)
    page = b.request("GET", "/compose")
    form = compose_form(page["body"])
    fields = dict(form["fields"])
    for key in ("to", "cc", "bcc", "subject", "body"):
        fields[key] = spec.get(key, "")
    sent = post_form(b, fields, "send", files)
    return {"form": form, "status": sent["status"], "body": sent["body"],
            "sent": imap_folder(imap_port, user, password, "Sent")}


def find_uid(b, subject):
    inbox = b.request("GET", "/mail?folder=INBOX")
    for href, s in re.findall(r'<a href="(/read\?[^"]+)">([^<]*)</a>', inbox["body"]):
        if html.unescape(s) == subject:
            return urllib.parse.parse_qs(urllib.parse.urlsplit(html.unescape(href)).query)["uid"][0]
    raise SystemExit(f"no message {subject!r} in the inbox")


def answer(b, user, password, mode, subject, to):
    b.login(user, password)
    uid = find_uid(b, subject)
    page = b.request("GET", f"/compose?{mode}={uid}&folder=INBOX")
    form = compose_form(page["body"])
    fields = dict(form["fields"])
    if to:
        fields["to"] = to
    sent = post_form(b, fields, "send")
    return {"page_status": page["status"], "form": form, "status": sent["status"], "body": sent["body"]}


def draft(b, user, password, imap_port, spec_path):
    spec, files = load_spec(spec_path)
    b.login(user, password)
    form = compose_form(b.request("GET", "/compose")["body"])
    fields = dict(form["fields"])
    for key in ("to", "cc", "bcc", "subject", "body"):
        fields[key] = spec.get(key, "")
    saved = post_form(b, fields, "draft", files)
    out = {"saved_status": saved["status"], "saved_body": saved["body"],
           "drafts_after_save": imap_folder(imap_port, user, password, "Drafts")}
    link = re.search(r'href="(/compose\?draft=\d+)"', saved["body"])
    if not link:
        return out
    out["link"] = html.unescape(link.group(1))
    reopened = compose_form(b.request("GET", out["link"])["body"])
    out["reopened"] = reopened
    # Saved again with a changed body: one draft remains, the new one.
    fields = dict(reopened["fields"])
    fields["body"] = fields["body"] + "\nP.S. edited"
    again = post_form(b, fields, "draft")
    out["again_status"] = again["status"]
    out["drafts_after_again"] = imap_folder(imap_port, user, password, "Drafts")
    link = re.search(r'href="(/compose\?draft=\d+)"', again["body"])
    second = compose_form(b.request("GET", html.unescape(link.group(1)))["body"])
    sent = post_form(b, second["fields"], "send")
    out["sent_status"] = sent["status"]
    out["sent_body"] = sent["body"]
    out["drafts_after_send"] = imap_folder(imap_port, user, password, "Drafts")
    return out


def mailto(b, user, password, uri):
    b.login(user, password)
    page = b.request("GET", "/compose?" + urllib.parse.urlencode({"uri": uri}))
    return {"status": page["status"], "form": compose_form(page["body"])}


def decode(_b, path):
    with open(path, "rb") as f:
        msg = email.message_from_binary_file(f, policy=email.policy.default)
    files = []
    for part in msg.iter_attachments():
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload()[0] if part.is_multipart() else part.get_payload()
            data = inner.as_bytes(policy=email.policy.SMTP) if hasattr(inner, "as_bytes") else b""
        else:
            data = part.get_payload(decode=True) or b""
        files.append({"filename": part.get_filename(), "type": part.get_content_type(),
                      "data": data.decode("latin-1")})
    text = msg.get_body(("plain",))
    return {"headers": [[k, str(v)] for k, v in msg.items()],
            "type": msg.get_content_type(),
            "text": text.get_content() if text is not None else None,
            "attachments": files}


def main():
    base, scenario, *args = sys.argv[1:]
    cafile = None
    if "--cafile" in args:
        i = args.index("--cafile")
        cafile = args[i + 1]
        del args[i:i + 2]
    b = Browser(base, cafile) if base != "-" else None
    result = {"send": send, "answer": answer, "draft": draft, "mailto": mailto, "decode": decode}[scenario](b, *args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
