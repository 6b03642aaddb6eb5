#!/usr/bin/env python3
"""A scripted SMTP next hop for the relay's delivery tests (stdlib only, loopback only).

Accepts mail like a plain ESMTP server (PIPELINING, 8BITMIME, SIZE), except where the
script says otherwise, and writes every accepted message to OUT_DIR as one file:
    MAIL:<sender>\n RCPT:<rcpt>\n ... \n\n<data as received, dot-unstuffed>
so tests can compare bytes. Prints "listening PORT" on stdout once ready.

Script options:
  --mail-fail N:CODE       the first N MAIL commands get CODE (e.g. 1:451)
  --rcpt CODE=ADDRESS      RCPT TO:<ADDRESS> always gets CODE (repeatable)
  --eom-delay SECONDS      wait this long before answering the end of data
  --port P                 listen on P (default: any free port)
  --greeting-name NAME     the host name in the 220 greeting (default scripted.sink)
  --ehlo-name NAME         the host name in the EHLO/HELO reply (default scripted.sink)
  --starttls CERT:KEY      offer STARTTLS with this PEM certificate and key
  --starttls-garbage       offer STARTTLS, answer 220, then send junk instead of a handshake
                           and close (a hop whose TLS is broken)
With either STARTTLS option each message file's head also has
    TLS:<protocol version, or none>\n STARTTLS-SEEN:<STARTTLS commands so far, all connections>\n
"""
import argparse
import os
import socket
import socketserver
import ssl
import sys
import threading
import time

state_lock = threading.Lock()
mail_count = 0
seq = 0
starttls_seen = 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--mail-fail", default="0:451")
    ap.add_argument("--rcpt", action="append", default=[])
    ap.add_argument("--eom-delay", type=float, default=0.0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--greeting-name", default="scripted.sink")
    ap.add_argument("--ehlo-name", default="scripted.sink")
    ap.add_argument("--starttls", default=None)
    ap.add_argument("--starttls-garbage", action="store_true")
    args = ap.parse_args()
    tls_context = None
    if args.starttls:
        cert, key = args.starttls.split(":", 1)
        tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_context.load_cert_chain(cert, key)
    offer_tls = tls_context is not None or args.starttls_garbage
    fail_n, fail_code = args.mail_fail.split(":")
    fail_n = int(fail_n)
    rcpt_codes = {}
    for item in args.rcpt:
        code, addr = item.split("=", 1)
        rcpt_codes[addr.lower()] = code

    class Handler(socketserver.StreamRequestHandler):
        def reply(self, line):
            self.wfile.write(line.encode() + b"\r\n")
            self.wfile.flush()

        def handle(self):
            global mail_count, seq, starttls_seen
            self.reply("220 " + args.greeting_name + " ESMTP")
            sender = None
            rcpts = []
            tls_version = None
            while True:
                line = self.rfile.readline(4096)
                if not line:
                    return
                cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
                verb = cmd[:4].upper()
                if verb in ("EHLO", "HELO"):
                    starttls = "250-STARTTLS\r\n" if offer_tls and tls_version is None else ""
                    self.reply("250-" + args.ehlo_name + "\r\n" + starttls + "250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000")
                elif cmd.upper() == "STARTTLS" and offer_tls and tls_version is None:
                    with state_lock:
                        starttls_seen += 1
                    sender, rcpts = None, []
                    self.reply("220 2.0.0 Ready to start TLS")
                    if args.starttls_garbage:
                        self.wfile.write(b"this is not a TLS record\r\n" * 4)
                        self.wfile.flush()
                        return
                    try:
                        conn = tls_context.wrap_socket(self.connection, server_side=True)
                    except (ssl.SSLError, OSError) as e:
                        print(f"sink: TLS handshake failed: {e}", file=sys.stderr, flush=True)
                        return
                    self.connection = self.request = conn
                    self.rfile = conn.makefile("rb")
                    self.wfile = conn.makefile("wb")
                    tls_version = conn.version()
                elif verb == "MAIL":
                    with state_lock:
                        mail_count += 1
                        n = mail_count
                    if n <= fail_n:
                        sender, rcpts = None, []
                        self.reply(f"{fail_code} 4.7.1 try again later (scripted)")
                        continue
                    sender = cmd[cmd.index(":") + 1:].split(" ")[0].strip("<>")
                    rcpts = []
                    self.reply("250 2.1.0 Ok")
                elif verb == "RCPT" and sender is None:
                    self.reply("503 5.5.1 need MAIL first")
                elif verb == "RCPT":
                    addr = cmd[cmd.index(":") + 1:].split(" ")[0].strip("<>")
                    code = rcpt_codes.get(addr.lower())
                    if code:
                        self.reply(f"{code} 5.1.1 <{addr}>: scripted refusal")
                    else:
                        rcpts.append(addr)
                        self.reply("250 2.1.5 Ok")
                elif verb == "DATA":
                    if sender is None or not rcpts:
                        self.reply("503 5.5.1 need MAIL and RCPT first")
                        continue
                    self.reply("354 End data with <CR><LF>.<CR><LF>")
                    data = bytearray()
                    while True:
                        dl = self.rfile.readline(1 << 20)
                        if not dl:
                            return
                        if dl == b".\r\n":
                            break
                        if dl.startswith(b"."):
                            dl = dl[1:]
                        data += dl
                    if args.eom_delay:
                        time.sleep(args.eom_delay)
                    with state_lock:
                        seq += 1
                        name = os.path.join(args.out_dir, f"msg-{seq:06d}-{os.getpid()}")
                    head = f"MAIL:{sender}\n" + "".join(f"RCPT:{r}\n" for r in rcpts)
                    if offer_tls:
                        with state_lock:
                            seen = starttls_seen
                        head += f"TLS:{tls_version or 'none'}\nSTARTTLS-SEEN:{seen}\n"
                    head += "\n"
                    with open(name + ".tmp", "wb") as f:
                        f.write(head.encode() + bytes(data))
                    os.rename(name + ".tmp", name)
                    self.reply("250 2.0.0 Ok: queued")
                elif verb == "RSET":
                    sender, rcpts = None, []
                    self.reply("250 2.0.0 Ok")
                elif verb == "NOOP":
                    self.reply("250 2.0.0 Ok")
                elif verb == "QUIT":
                    self.reply("221 2.0.0 Bye")
                    return
                else:
                    self.reply("502 5.5.2 command not recognized")

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        # The default backlog (5) overflows when a relay opens its 20 connections per
        # destination at once: a connection the kernel completed on the client side but
        # never queued here waits for a greeting until the relay's 5-minute timeout.
        request_queue_size = 128

    server = Server(("127.0.0.1", args.port), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
