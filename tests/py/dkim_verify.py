#!/usr/bin/python3
"""Verifies every DKIM-Signature of a message with dkimpy (Debian python3-dkim), the keys
read from the test DNS server (tests/py/dns_server.py) through dkimpy's dnsfunc hook, not
the system resolver.

usage: /usr/bin/python3 dkim_verify.py DNS_PORT MESSAGE_FILE
Prints one line per signature, "pass d=D s=S" or "fail d=D s=S", in header order; exits 0
when there is at least one signature and every one passes, 1 otherwise.
"""
import sys

import dkim
import dns.resolver


def main():
    port = int(sys.argv[1])
    with open(sys.argv[2], "rb") as f:
        message = f.read()

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        try:
            answer = resolver.resolve(name, "TXT", lifetime=timeout)
        except Exception:
            return b""
        for rdata in answer:
            return b"".join(rdata.strings)
        return b""

    checker = dkim.DKIM(message)
    count = sum(
        1 for name, _ in checker.headers if name.lower() == b"dkim-signature"
    )
    ok = count > 0
    for idx in range(count):
        try:
            good = checker.verify(idx=idx, dnsfunc=dnsfunc)
        except dkim.DKIMException as error:
            print("error", error, file=sys.stderr)
            good = False
        sig = checker.signature_fields or {}
        d = sig.get(b"d", b"?").decode()
        s = sig.get(b"s", b"?").decode()
        print(("pass" if good else "fail"), "d=" + d, "s=" + s)
        ok = ok and good
    sys.exit(0 if ok else 1)


main()
