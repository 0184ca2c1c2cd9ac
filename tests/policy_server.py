"""A policy server of another make for idmint's poller: Python's own http.server behind its ssl
module, requiring a client certificate from the given CA, answering every GET with the JSON
file given. Prints its port, then one line per request: the path and the client's subject CN.

usage: policy_server.py CERT KEY CLIENT_CA ANSWER_FILE
"""

import http.server
import ssl
import sys

cert, key, client_ca, answer_file = sys.argv[1:5]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        peer = self.connection.getpeercert()
        cn = dict(x[0] for x in peer["subject"]).get("commonName", "") if peer else ""
        with open(answer_file, "rb") as f:
            body = f.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        print(f"{self.path} {cn}", flush=True)

    def log_message(self, *args):
        pass


context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.load_verify_locations(client_ca)
context.verify_mode = ssl.CERT_REQUIRED
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
