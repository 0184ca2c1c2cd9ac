"""One request to idmint's admin API with Python's own http.client and ssl: a stock client of
another language. Arguments: port, certificate file or '-' for plain HTTP, key file, bundle
file, method, path, and a body (optional). Prints the status on the first line, then the body.
"""
import http.client
import ssl
import sys

port, cert, key, bundle, method, path = sys.argv[1:7]
body = sys.argv[7] if len(sys.argv) > 7 else None
if cert == "-":
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
else:
    ctx = ssl.create_default_context(cafile=bundle)
    ctx.load_cert_chain(cert, key)
    # The server's certificate names localhost; the connection goes to 127.0.0.1.
    conn = http.client.HTTPSConnection("localhost", int(port), context=ctx, timeout=10)
headers = {"Content-Type": "application/json"} if body is not None else {}
conn.request(method, path, body=body, headers=headers)
answer = conn.getresponse()
print(answer.status)
print(answer.read().decode("utf-8", "replace"), end="")
