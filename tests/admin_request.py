"""One request to idmint's admin API with Python's own http.client and ssl: a stock client of
another language. Arguments: port, certificate file or '-' for plain HTTP, key file, bundle
file, method, path, and a body (optional). Prints the status on the first line, then the body.
With REPEAT=n in the environment it sends the request n times, each on a new connection, and
prints the last answer.
"""
import os
import http.client
import ssl
import sys

port, cert, key, bundle, method, path = sys.argv[1:7]
body = sys.argv[7] if len(sys.argv) > 7 else None
ctx = None
if cert != "-":
    ctx = ssl.create_default_context(cafile=bundle)
    ctx.load_cert_chain(cert, key)
headers = {"Content-Type": "application/json"} if body is not None else {}
for _ in range(int(os.environ.get("REPEAT", "1"))):
    if ctx is None:
        conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
    else:
        # The server's certificate names localhost; the connection goes to 127.0.0.1.
        conn = http.client.HTTPSConnection("localhost", int(port), context=ctx, timeout=10)
    conn.request(method, path, body=body, headers=headers)
    answer = conn.getresponse()
    status, text = answer.status, answer.read().decode("utf-8", "replace")
    conn.close()
print(status)
print(text, end="")
