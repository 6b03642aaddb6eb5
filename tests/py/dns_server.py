"""A tiny authoritative DNS server on loopback (UDP and TCP, same port) for tests (stdlib only).

Usage: dns_server.py [--zone FILE] NAME=ANSWER ...
  ANSWER is one record or a condition of the name:
    an IPv4 address or "a:ADDR"   an A record
    "aaaa:ADDR"                  an AAAA record
    "mx:PREF:EXCHANGE"           an MX record
    "txt:TEXT"                   a TXT record (split into 255-octet strings)
    "txts:JSON"                  a TXT record of exactly these character-strings, a JSON
                                 list; each character U+0000..U+00FF is one octet
    "spf:TEXT", "spfs:JSON"      the same as type SPF (99, RFC 4408)
    "ptr:NAME"                   a PTR record
    "cname:NAME"                 a CNAME record (answered for every type)
    "servfail"                   SERVFAIL for every type
    "silent"                     no reply at all
    "timeout"                    no reply for a type this name has no record of (the others
                                 are answered)
  A name may be given several times: each record is kept and answered for its own type.
  --zone FILE reads more NAME=ANSWER lines from FILE (blank lines and "#" comments skipped).
  Any other name is NXDOMAIN; other types for a known name get NOERROR, no data.
Prints "PORT <n>" once listening, then "Q <name> <type>" for every query (flushed), so a
test can wait for the port and assert on the queries asked.
"""
import socket
import struct
import sys
import threading

import json

TYPES = {"a": 1, "ns": 2, "cname": 5, "ptr": 12, "mx": 15, "txt": 16, "aaaa": 28, "spf": 99}

table = {}


def add(line):
    name, answer = line.split("=", 1)
    table.setdefault(name.lower().rstrip("."), []).append(answer)


args = sys.argv[1:]
while args:
    arg = args.pop(0)
    if arg == "--zone":
        with open(args.pop(0), encoding="utf-8") as zone:
            for line in zone:
                line = line.rstrip("\r\n")
                if line.strip() and not line.lstrip().startswith("#"):
                    add(line)
    else:
        add(arg)


def parse_question(packet):
    labels, at = [], 12
    while True:
        length = packet[at]
        at += 1
        if length == 0:
            break
        labels.append(packet[at:at + length].decode("ascii", "replace"))
        at += length
    qtype, qclass = struct.unpack("!HH", packet[at:at + 4])
    return ".".join(labels).lower(), qtype, packet[12:at + 4]


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\x00"


def record(answer):
    """(type, rdata) of one configured record."""
    kind, _, value = answer.partition(":")
    kind = kind.lower()
    if kind == "mx":
        pref, exchange = value.split(":", 1)
        return 15, struct.pack("!H", int(pref)) + encode_name(exchange)
    if kind in ("txt", "spf"):
        data = value.encode("utf-8")
        chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
        return TYPES[kind], b"".join(bytes([len(c)]) + c for c in chunks)
    if kind in ("txts", "spfs"):
        chunks = [c.encode("latin-1") for c in json.loads(value)]
        return TYPES[kind[:-1]], b"".join(bytes([len(c)]) + c for c in chunks)
    if kind == "ptr":
        return 12, encode_name(value)
    if kind == "cname":
        return 5, encode_name(value)
    if kind == "aaaa":
        return 28, socket.inet_pton(socket.AF_INET6, value)
    if kind == "a":
        return 1, socket.inet_aton(value)
    return 1, socket.inet_aton(answer)


def respond(packet):
    """The reply to one query, or None for no reply."""
    if len(packet) < 17:
        return None
    query_id, flags = struct.unpack("!HH", packet[:4])
    name, qtype, question = parse_question(packet)
    print("Q", name, qtype, flush=True)
    answers = table.get(name)
    if answers is not None and "silent" in answers:
        return None
    rd = flags & 0x0100
    body, count, rcode = b"", 0, 0
    if answers is None:
        rcode = 3
    elif "servfail" in answers:
        rcode = 2
    else:
        records = [record(answer) for answer in answers if answer != "timeout"]
        if "timeout" in answers and not any(t == qtype or t == 5 for t, _ in records):
            return None
        for rtype, rdata in records:
            if rtype == qtype or (rtype == 5 and qtype != 5):
                body += b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata
                count += 1
    header = struct.pack("!HHHHHH", query_id, 0x8400 | 0x0080 | rd | rcode, 1, count, 0, 0)
    reply = header + question + body
    return reply


def serve_tcp(listener):
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                while True:
                    head = conn.recv(2, socket.MSG_WAITALL)
                    if len(head) < 2:
                        break
                    (length,) = struct.unpack("!H", head)
                    reply = respond(conn.recv(length, socket.MSG_WAITALL))
                    if reply is None:
                        break
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
            except OSError:
                pass


def bind_pair():
    """A UDP and a TCP socket on one free port. The UDP port is free for TCP only by chance
    (other tests' connections take ephemeral TCP ports), so a taken one is retried."""
    for _ in range(100):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind(("127.0.0.1", port))
        except OSError:
            tcp.close()
            udp.close()
            continue
        return udp, tcp, port
    raise SystemExit("no port free for both UDP and TCP after 100 tries")


sock, tcp, port = bind_pair()
tcp.listen(16)
threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
print("PORT", port, flush=True)

while True:
    packet, peer = sock.recvfrom(4096)
    reply = respond(packet)
    if reply is None:
        continue
    if len(reply) > 512:
        # Truncated (TC): the client asks again over TCP (RFC 7766).
        query_id, flags = struct.unpack("!HH", reply[:4])
        _, _, question = parse_question(packet)
        reply = struct.pack("!HHHHHH", query_id, flags | 0x0200, 1, 0, 0, 0) + question
    sock.sendto(reply, peer)
