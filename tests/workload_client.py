"""A stock gRPC client of another language (Python's grpcio, default options) calling the SPIFFE
Workload API on an instance's socket, as an app would. No generated code: requests are empty
messages and responses are decoded here, field by field, so that nothing of idmint's is used.

Arguments: SOCKET MODE [N]. MODE is svid (the first FetchX509SVID response), follow (N of
them), bundles (the first FetchX509Bundles response), no-header (FetchX509SVID without the
security header), jwt AUDIENCE... (FetchJWTSVID, then the token checked here, with Python's
cryptography, against the JWK set FetchJWTBundles gives), validate AUDIENCE TOKEN
(ValidateJWTSVID: the subject it names). Prints one JSON object per response;
a call that fails prints {"code": ..., "details": ...}.
"""

import base64
import json
import sys

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def varint(data, i):
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def fields(data):
    """(number, bytes) of each length-delimited field of a protobuf message."""
    i, out = 0, []
    while i < len(data):
        key, i = varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 2:
            n, i = varint(data, i)
            out.append((number, data[i:i + n]))
            i += n
        elif wire == 0:
            _, i = varint(data, i)
        else:
            raise ValueError("unexpected wire type %d" % wire)
    return out


def certificates(der):
    """Concatenated DER certificates, split (each is one SEQUENCE with a long-form length)."""
    out = []
    while der:
        assert der[0] == 0x30
        if der[1] & 0x80:
            k = der[1] & 0x7F
            n = 2 + k + int.from_bytes(der[2:2 + k], "big")
        else:
            n = 2 + der[1]
        out.append(x509.load_der_x509_certificate(der[:n]))
        der = der[n:]
    return out


def svid_response(data):
    out = {"svids": [], "crls": 0, "federated": 0}
    for number, value in fields(data):
        if number == 1:
            svid = dict(fields(value))
            chain = certificates(svid.get(2, b""))
            key = serialization.load_der_private_key(svid.get(3, b""), password=None)
            pub = lambda k: k.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
            out["svids"].append({
                "spiffe_id": svid.get(1, b"").decode(),
                "serial": format(chain[0].serial_number, "x"),
                "chain": len(chain),
                "key_matches": pub(key.public_key()) == pub(chain[0].public_key()),
                "roots": len(certificates(svid.get(4, b""))),
            })
        elif number == 2:
            x509.load_der_x509_crl(value)
            out["crls"] += 1
        elif number == 3:
            out["federated"] += 1
    return out


def bundles_response(data):
    out = {"bundles": {}, "crls": 0}
    for number, value in fields(data):
        if number == 1:
            x509.load_der_x509_crl(value)
            out["crls"] += 1
        elif number == 2:
            entry = dict(fields(value))
            out["bundles"][entry[1].decode()] = len(certificates(entry.get(2, b"")))
    return out


def encode_varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def b64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_jwt(token, jwks):
    """The token's claims once its ES256 signature checks against its key in `jwks`."""
    head, body, sig = token.split(".")
    header = json.loads(b64url(head))
    assert header["alg"] == "ES256", header
    key = next(k for k in jwks["keys"] if k.get("kid") == header["kid"])
    assert key["use"] == "jwt-svid" and key["kty"] == "EC" and key["crv"] == "P-256", key
    public = ec.EllipticCurvePublicNumbers(
        int.from_bytes(b64url(key["x"]), "big"),
        int.from_bytes(b64url(key["y"]), "big"),
        ec.SECP256R1(),
    ).public_key()
    raw = b64url(sig)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, (head + "." + body).encode(), ec.ECDSA(hashes.SHA256()))
    return header, json.loads(b64url(body))


def fetch_jwt(channel, header, audiences):
    request = b"".join(b"\x0a" + encode_varint(len(a)) + a for a in (a.encode() for a in audiences))
    call = channel.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID",
                               request_serializer=lambda _: request,
                               response_deserializer=lambda b: b)
    svid = dict(fields(dict(fields(call(None, metadata=header, timeout=30)))[1]))
    bundles = channel.unary_stream("/SpiffeWorkloadAPI/FetchJWTBundles",
                                   request_serializer=lambda _: b"",
                                   response_deserializer=lambda b: b)
    first = next(bundles(None, metadata=header, timeout=30))
    jwks = {}
    for number, value in fields(first):
        entry = dict(fields(value))
        jwks[entry[1].decode()] = json.loads(entry[2])
    token = svid[2].decode()
    trust_domain = "spiffe://" + svid[1].decode().split("/")[2]
    jwt_header, claims = check_jwt(token, jwks[trust_domain])
    return {"spiffe_id": svid[1].decode(), "token": token, "kid": jwt_header["kid"],
            "claims": claims, "verified": True}


def main(socket, mode, n=1, rest=()):
    channel = grpc.insecure_channel("unix:" + socket)
    header = (("workload.spiffe.io", "true"),)
    raw = dict(request_serializer=lambda _: b"", response_deserializer=lambda b: b)
    try:
        if mode in ("svid", "follow", "no-header"):
            call = channel.unary_stream("/SpiffeWorkloadAPI/FetchX509SVID", **raw)
            stream = call(None, metadata=() if mode == "no-header" else header, timeout=30)
            for i, message in enumerate(stream):
                print(json.dumps(svid_response(message)), flush=True)
                if i + 1 >= n:
                    break
        elif mode == "bundles":
            call = channel.unary_stream("/SpiffeWorkloadAPI/FetchX509Bundles", **raw)
            print(json.dumps(bundles_response(next(call(None, metadata=header, timeout=30)))))
        elif mode == "jwt":
            print(json.dumps(fetch_jwt(channel, header, rest)))
        elif mode == "validate":
            audience, token = (v.encode() for v in rest)
            request = (b"\x0a" + encode_varint(len(audience)) + audience
                       + b"\x12" + encode_varint(len(token)) + token)
            call = channel.unary_unary("/SpiffeWorkloadAPI/ValidateJWTSVID",
                                       request_serializer=lambda _: request,
                                       response_deserializer=lambda b: b)
            answer = dict(fields(call(None, metadata=header, timeout=30)))
            print(json.dumps({"spiffe_id": answer[1].decode()}))
        else:
            sys.exit("unknown mode %r" % mode)
    except grpc.RpcError as e:
        print(json.dumps({"code": e.code().name, "details": e.details()}))


if __name__ == "__main__":
    if sys.argv[2] in ("jwt", "validate"):
        main(sys.argv[1], sys.argv[2], rest=sys.argv[3:])
    else:
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1)
