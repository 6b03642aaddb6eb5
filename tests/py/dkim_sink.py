#!/usr/bin/env python3
"""A next hop without 8BITMIME for the DKIM tests (stdlib only, loopback only): its EHLO
reply announces nothing but SIZE, so the relay must down-convert 8-bit mail (RFC 6152 §3)
before sending it here. Each accepted message is written to OUT_DIR as one file (the data
as received, dot-unstuffed, CRLF line ends); a file appears only once complete. Prints
"listening PORT" on stdout once ready.

usage: dkim_sink.py OUT_DIR
"""
import os
import socketserver
import sys
import threading

lock = threading.Lock()
seq = 0


class Handler(socketserver.StreamRequestHandler):
    def reply(self, line):
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self):
        global seq
        self.reply("220 seven.bit.sink ESMTP")
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            verb = line.strip().upper()
            if verb.startswith(b"EHLO"):
                self.reply("250-seven.bit.sink")
                self.reply("250 SIZE 10485760")
            elif verb.startswith(b"HELO"):
                self.reply("250 seven.bit.sink")
            elif verb.startswith(b"MAIL"):
                if b"BODY=8BITMIME" in verb:
                    self.reply("555 5.5.4 BODY=8BITMIME was not offered")
                else:
                    self.reply("250 2.1.0 ok")
            elif verb.startswith(b"RCPT"):
                self.reply("250 2.1.5 ok")
            elif verb == b"DATA":
                self.reply("354 go ahead")
                data = bytearray()
                while True:
                    l = self.rfile.readline(1 << 20)
                    if not l or l == b".\r\n":
                        break
                    if l.startswith(b"."):
                        l = l[1:]
                    data += l
                with lock:
                    seq += 1
                    n = seq
                tmp = os.path.join(OUT, "%06d.tmp" % n)
                with open(tmp, "wb") as f:
                    f.write(bytes(data))
                os.rename(tmp, os.path.join(OUT, "%06d.eml" % n))
                self.reply("250 2.0.0 queued as %d" % n)
            elif verb == b"QUIT":
                self.reply("221 2.0.0 bye")
                return
            elif verb in (b"RSET", b"NOOP"):
                self.reply("250 2.0.0 ok")
            else:
                self.reply("502 5.5.2 not here")


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


OUT = sys.argv[1]
server = Server(("127.0.0.1", 0), Handler)
print("listening", server.server_address[1], flush=True)
server.serve_forever()
