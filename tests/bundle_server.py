"""A SPIFFE bundle endpoint that misbehaves on purpose, over HTTPS (Python's http.server and
ssl), for the federation tests.

Arguments: CERT KEY ROUTES. ROUTES is a JSON file mapping a path to [status, headers, body];
a body that is {"repeat": TEXT, "times": N} is TEXT N times, other JSON is sent as JSON. Prints the port it listens on
(127.0.0.1), then serves until killed.
"""

import http.server
import json
import ssl
import sys


def main(cert, key, routes_file):
    with open(routes_file) as f:
        routes = json.load(f)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status, headers, body = routes.get(self.path, [404, {}, "no such path"])
            if isinstance(body, dict) and "repeat" in body:
                body = body["repeat"] * body["times"]
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:4])
