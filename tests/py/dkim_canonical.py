#!/usr/bin/python3
"""dkimpy's relaxed body canonicalisation (Debian python3-dkim, dkim.canonicalization.Relaxed,
the function dkim.sign and dkim.verify hash) of each body given.

usage: /usr/bin/python3 dkim_canonical.py < FRAMES
stdin: frames of a 4-byte big-endian length and that many body bytes; stdout: one frame per
body, its canonical form.
"""
import struct
import sys

from dkim.canonicalization import Relaxed


def main():
    data = sys.stdin.buffer.read()
    out = bytearray()
    at = 0
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        body = data[at + 4 : at + 4 + length]
        at += 4 + length
        canonical = Relaxed.canonicalize_body(body)
        out += struct.pack(">I", len(canonical)) + canonical
    sys.stdout.buffer.write(out)


main()
