#!/usr/bin/env python3
"""Follows an idmint ledger the way a generic C2SP tlog-tiles client does, with nothing of
idmint's code: reads the verifier key and the checkpoint over HTTP, checks the checkpoint's
Ed25519 signed-note signature, fetches the hash tiles the checkpoint's size covers (level 0,
and level 1 where a full one exists), recomputes the RFC 9162 root, and prints one JSON line.

Usage: tlog_check.py BASE_URL
"""

import base64
import hashlib
import json
import sys
import urllib.request

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def get(url):
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read()


def tile_path(level, index, width):
    groups = []
    while True:
        groups.append(index % 1000)
        index //= 1000
        if index == 0:
            break
    parts = ["x%03d" % g for g in reversed(groups)]
    parts[-1] = parts[-1][1:]
    path = "%d/%s" % (level, "/".join(parts))
    return path if width == 256 else "%s.p/%d" % (path, width)


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def mth(hashes):
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return node(mth(hashes[:k]), mth(hashes[k:]))


def split(data):
    assert len(data) % 32 == 0, "a tile is whole hashes"
    return [data[i:i + 32] for i in range(0, len(data), 32)]


def main():
    base = sys.argv[1]
    vkey = get(base + "/v1/log/key").decode().splitlines()[0]
    name, key_id, key_b64 = vkey.split("+", 2)
    key = base64.b64decode(key_b64)
    assert key[0] == 1, "an Ed25519 key"
    assert hashlib.sha256(name.encode() + b"\n" + key).digest()[:4].hex() == key_id

    note = get(base + "/v1/log/checkpoint").decode()
    cut = note.rindex("\n\n")
    text, signatures = note[:cut + 1], note[cut + 2:]
    signed = False
    for line in signatures.splitlines():
        prefix = "\u2014 " + name + " "
        if not line.startswith(prefix):
            continue
        blob = base64.b64decode(line[len(prefix):])
        if blob[:4].hex() != key_id:
            continue
        Ed25519PublicKey.from_public_bytes(key[1:]).verify(blob[4:], text.encode())
        signed = True
    assert signed, "the checkpoint carries the key's signature"
    origin, size, root = text.splitlines()[:3]
    size, root = int(size), base64.b64decode(root)

    leaves = []
    for n in range((size + 255) // 256):
        width = min(256, size - 256 * n)
        leaves += split(get(base + "/v1/log/tile/" + tile_path(0, n, width)))
    assert len(leaves) == size
    assert mth(leaves) == root, "the tiles make the checkpoint's root"
    full = size // 256
    if full:
        level1 = split(get(base + "/v1/log/tile/" + tile_path(1, 0, min(full, 256))))
        assert level1 == [mth(leaves[256 * i:256 * (i + 1)]) for i in range(len(level1))]
    print(json.dumps({"origin": origin, "size": size, "root_ok": True, "level1": full}))


main()
