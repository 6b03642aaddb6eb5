#!/usr/bin/env python3
"""Delivery latency from relay's log: for each message, the time from its `accepted` line
(the 250 after DATA went out) to its first `status="sent"` delivery line (the next hop's 250).
Prints `delivery_p50_ms=… delivery_p99_ms=… delivery_samples=…` for compare/run.sh."""
import re
import sys
from datetime import datetime

STAMP = re.compile(r"^(\S+)Z\s")
ID = re.compile(r"queue_id=([0-9A-F]{16})")


def stamp(line):
    m = STAMP.match(line)
    if not m:
        return None
    return datetime.fromisoformat(m.group(1)).timestamp()


def main(path):
    accepted, sent = {}, {}
    with open(path, errors="replace") as f:
        for line in f:
            m = ID.search(line)
            if not m:
                continue
            t = stamp(line)
            if t is None:
                continue
            if "relay::transaction" in line and " accepted " in line:
                accepted.setdefault(m.group(1), t)
            elif "relay::delivery" in line and 'status="sent"' in line:
                sent.setdefault(m.group(1), t)
    lat = sorted((sent[i] - accepted[i]) * 1000 for i in sent if i in accepted)
    if not lat:
        print("delivery_samples=0")
        return
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
    print(f"delivery_p50_ms={q(0.50):.2f} delivery_p99_ms={q(0.99):.2f} delivery_samples={len(lat)}")


if __name__ == "__main__":
    main(sys.argv[1])
