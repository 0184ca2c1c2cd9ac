"""A stock HTTPS client of another language (Python's ssl and http.client) fetching a SPIFFE
bundle endpoint, as a foreign trust domain's control plane would.

Arguments: HOST PORT PATH CAFILE PROFILE. PROFILE is web (the host name is checked against the
certificate, web-PKI style) or spiffe (it is not; the peer's URI SAN, its SPIFFE ID, is printed
for the caller to check). Prints one JSON object: status, content type, the peer's URI SANs and
the body (parsed when it is JSON). A failed connection prints {"error": ...}.
"""

import http.client
import json
import ssl
import sys


def main(host, port, path, cafile, profile):
    context = ssl.create_default_context(cafile=cafile)
    if profile == "spiffe":
        context.check_hostname = False
    try:
        conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        peer = conn.sock.getpeercert()
    except (OSError, ssl.SSLError) as e:
        print(json.dumps({"error": str(e)}))
        return
    uris = [value for kind, value in peer.get("subjectAltName", ()) if kind == "URI"]
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = body.decode(errors="replace")
    print(json.dumps({
        "status": response.status,
        "content_type": response.getheader("Content-Type"),
        "uris": uris,
        "body": parsed,
    }))


if __name__ == "__main__":
    main(*sys.argv[1:6])
