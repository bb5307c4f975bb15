#!/usr/bin/env python3
"""Independent verifier of an msec transparency log, written from docs/ledger.md, RFC 9162
and the C2SP signed-note / tlog-checkpoint specs only (no msec code).

usage: verify_log.py DB.sqlite CHECKPOINT_FILE VERIFIER_KEY [EXPORT.json]

Re-derives every log leaf from the rows of an msec SQLite database, checks each against the
stored leaf hash, recomputes the Merkle tree head for the checkpoint's size and compares it with
the checkpoint, whose Ed25519 signature it verifies. With an export file, it also checks each
inclusion proof in it. Prints one line per check; exits 1 on the first failure.
"""
import base64, hashlib, json, sqlite3, struct, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)

def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()

def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()

def mth(hashes):
    n = len(hashes)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashes[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(mth(hashes[:k]), mth(hashes[k:]))

def field(value):
    if value is None:
        raw = b""
    elif isinstance(value, int):
        raw = struct.pack(">q", value)
    elif isinstance(value, str):
        raw = value.encode()
    else:
        raw = bytes(value)
    return struct.pack(">I", len(raw)) + raw

def leaf(kind, *fields):
    return b"msec-leaf/v1\n" + bytes([kind]) + b"".join(field(f) for f in fields)

def derive(db):
    out = {}
    for d, s, i, r, dg, sealed in db.execute("SELECT device_id, sequence, issued_at, received_ms, digest, sealed FROM readings"):
        out[("reading", f"{d}/{s}")] = leaf(1, d, s, i, r, dg, sealed)
    for row in db.execute("SELECT id, tenant, owner, kind, public_key, created_ms, profile FROM devices"):
        out[("device", row[0])] = leaf(2, *row)
    for row in db.execute("SELECT id, at_ms, reason, device_id, source, detail FROM security_events"):
        out[("event", str(row[0]))] = leaf(3, *row)
    for row in db.execute("SELECT id, at_ms, actor, action, target, detail FROM admin_actions"):
        out[("admin", str(row[0]))] = leaf(4, *row)
    for row in db.execute("SELECT id, subject, grantee, purpose, given_ms FROM consents"):
        out[("consent", str(row[0]))] = leaf(5, *row)
    return out

def verify_checkpoint(note, vkey):
    name, keyhash_hex, key_b64 = vkey.strip().split("+", 2)
    raw = base64.b64decode(key_b64)
    if raw[0] != 1 or len(raw) != 33:
        fail("verifier key is not an Ed25519 signed-note key")
    public = raw[1:]
    keyhash = hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4]
    if keyhash.hex() != keyhash_hex:
        fail("verifier key hash mismatch")
    body, sigs = note.split("\n\n", 1)
    body += "\n"
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            fail("signature line without em dash")
        signer, sig_b64 = line[2:].split(" ", 1)
        sig = base64.b64decode(sig_b64)
        if signer == name and sig[:4] == keyhash:
            try:
                Ed25519PublicKey.from_public_bytes(public).verify(sig[4:], body.encode())
            except Exception:
                continue
            origin, size, root = body.splitlines()[:3]
            return origin, int(size), base64.b64decode(root)
    fail("no valid log signature on the checkpoint")

def verify_inclusion(leaf_h, index, size, proof, root):
    # RFC 9162 section 2.1.3.2
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_h
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while True:
                    fn >>= 1
                    sn >>= 1
                    if fn & 1 or fn == 0:
                        break
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root

def main():
    db_path, cp_path, vkey = sys.argv[1:4]
    origin, size, root = verify_checkpoint(open(cp_path, encoding="utf-8").read(), vkey)
    print(f"checkpoint signature ok: {origin} size {size}")
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    derived = derive(db)
    hashes, names = [], []
    for idx, kind, ref, stored in db.execute("SELECT idx, kind, ref, hash FROM log_leaves ORDER BY idx"):
        if idx != len(hashes):
            fail(f"log index gap at {idx}")
        data = derived.pop((kind, ref), None)
        if data is None:
            fail(f"leaf {idx}: record {kind}:{ref} is missing")
        if leaf_hash(data) != bytes(stored):
            fail(f"leaf {idx}: record {kind}:{ref} does not match its leaf")
        hashes.append(leaf_hash(data))
        names.append(f"{kind}:{ref}")
    if derived:
        fail(f"records without a leaf: {sorted(derived)[:5]}")
    print(f"re-derived {len(hashes)} leaves from the database rows")
    if len(hashes) < size:
        fail(f"the log has {len(hashes)} leaves, fewer than the checkpoint's {size}")
    if mth(hashes[:size]) != root:
        fail("the recomputed tree head differs from the checkpoint's root")
    print(f"tree head of the first {size} leaves matches the checkpoint")
    if len(sys.argv) > 4:
        export = json.load(open(sys.argv[4], encoding="utf-8"))
        e_origin, e_size, e_root = verify_checkpoint(export["checkpoint"], vkey)
        checked = 0
        for p in export["proofs"]:
            if p["inclusion_proof"] is None:
                continue
            proof = [bytes.fromhex(h) for h in p["inclusion_proof"]]
            if names[p["index"]] != p["record"]:
                fail(f"export: {p['record']} is given leaf {p['index']}, which is {names[p['index']]}'s")
            if bytes.fromhex(p["leaf_hash"]) != hashes[p["index"]]:
                fail(f"export: {p['record']} leaf hash differs from the re-derived one")
            if not verify_inclusion(bytes.fromhex(p["leaf_hash"]), p["index"], e_size, proof, e_root):
                fail(f"export: inclusion proof of {p['record']} does not verify")
            checked += 1
        if checked == 0:
            fail("export: no inclusion proof to check")
        print(f"export: {checked} inclusion proofs verify against checkpoint size {e_size}")
    print("ok")

main()
