"""A second strict reader of what idmint encodes: Python's `cryptography`, whose DER parser
refuses what lenient ones accept. Used by the Rust tests; not a tool of its own.

Arguments: KIND=PATH ... with KIND one of cert, csr, key, crl (DER files), or cert=PATH@ISSUER
or crl=PATH@ISSUER to also check the signature under ISSUER's key. Prints one JSON object per
argument, a line each; exits non-zero, naming the file, at the first one refused.
"""

import json
import sys

try:
    import cryptography
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
except ImportError:
    sys.exit("Python's cryptography package is not installed; `make test` installs it")

MINIMUM = (42, 0)


def version():
    return tuple(int(p) for p in cryptography.__version__.split(".")[:2])


def name(n):
    return [[[a.oid.dotted_string, a.value] for a in rdn] for rdn in n.rdns]


def certificate(data, issuer):
    cert = x509.load_der_x509_certificate(data)
    out = {
        "subject": name(cert.subject),
        "issuer": name(cert.issuer),
        "serial": format(cert.serial_number, "x"),
        "not_before": int(cert.not_valid_before_utc.timestamp()),
        "not_after": int(cert.not_valid_after_utc.timestamp()),
        "extensions": [],
        "uris": [],
        "dns": [],
        "ips": [],
    }
    for ext in cert.extensions:
        out["extensions"].append([ext.oid.dotted_string, ext.critical])
        if isinstance(ext.value, x509.SubjectAlternativeName):
            out["uris"] = ext.value.get_values_for_type(x509.UniformResourceIdentifier)
            out["dns"] = ext.value.get_values_for_type(x509.DNSName)
            out["ips"] = [str(ip) for ip in ext.value.get_values_for_type(x509.IPAddress)]
    cert.public_key()
    if issuer is not None:
        with open(issuer, "rb") as f:
            cert.verify_directly_issued_by(x509.load_der_x509_certificate(f.read()))
        out["signature_verified"] = True
    return out


def request(data):
    csr = x509.load_der_x509_csr(data)
    if not csr.is_signature_valid:
        raise ValueError("the request's signature does not verify")
    return {"subject": name(csr.subject)}


def revocation_list(data, issuer):
    crl = x509.load_der_x509_crl(data)
    out = {
        "issuer": name(crl.issuer),
        "serials": [format(r.serial_number, "x") for r in crl],
        "number": crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number,
        "extensions": [[ext.oid.dotted_string, ext.critical] for ext in crl.extensions],
    }
    if issuer is not None:
        with open(issuer, "rb") as f:
            signer = x509.load_der_x509_certificate(f.read())
        if not crl.is_signature_valid(signer.public_key()):
            raise ValueError("the CRL's signature does not verify under its issuer's key")
        out["signature_verified"] = True
    return out


def key(data):
    serialization.load_der_private_key(data, password=None)
    return {}


def main(args):
    if version() < MINIMUM:
        sys.exit(
            "Python's cryptography is %s; the strict checks need %d.%d or later"
            % (cryptography.__version__, *MINIMUM)
        )
    for arg in args:
        kind, _, path = arg.partition("=")
        issuer = None
        if kind in ("cert", "crl") and "@" in path:
            path, issuer = path.split("@", 1)
        with open(path, "rb") as f:
            data = f.read()
        try:
            if kind == "cert":
                out = certificate(data, issuer)
            elif kind == "csr":
                out = request(data)
            elif kind == "key":
                out = key(data)
            elif kind == "crl":
                out = revocation_list(data, issuer)
            else:
                sys.exit("unknown kind %r" % kind)
        except Exception as e:  # the test prints the reason with the file
            sys.exit("%s %s refused by cryptography %s: %r" % (kind, path, cryptography.__version__, e))
        out["path"] = path
        print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
