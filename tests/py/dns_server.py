"""A tiny authoritative DNS server on loopback UDP for tests (stdlib only).

Usage: dns_server.py NAME=ANSWER ...
  ANSWER is an IPv4 address (an A record), "mx:PREF:EXCHANGE" (one MX record), "servfail",
  or "silent" (no reply at all).
  Any other name is NXDOMAIN; AAAA and other types for a known name get NOERROR, no data.
Prints "PORT <n>" once listening, then "Q <name> <type>" for every query (flushed), so a
test can wait for the port and assert on the queries asked.
"""
import socket
import struct
import sys

table = {}
for arg in sys.argv[1:]:
    name, answer = arg.split("=", 1)
    table[name.lower().rstrip(".")] = answer

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
print("PORT", sock.getsockname()[1], flush=True)


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
        out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\x00"


while True:
    packet, peer = sock.recvfrom(4096)
    if len(packet) < 17:
        continue
    query_id, flags = struct.unpack("!HH", packet[:4])
    name, qtype, question = parse_question(packet)
    print("Q", name, qtype, flush=True)
    answer = table.get(name)
    if answer == "silent":
        continue
    rd = flags & 0x0100
    answers = b""
    if answer is None:
        rcode, count = 3, 0
    elif answer == "servfail":
        rcode, count = 2, 0
    elif answer.startswith("mx:"):
        rcode, count = 0, 0
        if qtype == 15:
            _, pref, exchange = answer.split(":", 2)
            rdata = struct.pack("!H", int(pref)) + encode_name(exchange)
            rcode, count = 0, 1
            answers = b"\xc0\x0c" + struct.pack("!HHIH", 15, 1, 60, len(rdata)) + rdata
    elif qtype == 1:
        rcode, count = 0, 1
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(answer)
    else:
        rcode, count = 0, 0
    header = struct.pack("!HHHHHH", query_id, 0x8400 | 0x0080 | rd | rcode, 1, count, 0, 0)
    sock.sendto(header + question + answers, peer)
