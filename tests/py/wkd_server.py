#!/usr/bin/env python3
"""A Web Key Directory for tests/signature_checks.rs: Python's http.server over TLS with
a test CA's certificate, serving the files under ROOT (e.g.
ROOT/.well-known/openpgpkey/DOMAIN/hu/HASH). Prints its port, then serves until killed.

usage: wkd_server.py ROOT CERT KEY
"""

import functools
import http.server
import ssl
import sys


def main():
    root, cert, key = sys.argv[1:4]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
