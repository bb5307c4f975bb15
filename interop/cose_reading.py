#!/usr/bin/env python3
"""An msec device written only from docs/protocol.md, with independent COSE/CBOR libraries
(pycose, cbor2, cryptography). Used by the interop test; also a starting point for gateways.

  cose_reading.py make SEED_HEX SEQUENCE IAT   -> prints a COSE_Sign1 reading as hex
  cose_reading.py verify PUBLIC_KEY_HEX HEX    -> verifies an msec envelope, prints its SenML as JSON
"""
import hashlib
import json
import sys

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pycose.algorithms import EdDSA
from pycose.headers import KID, Algorithm, ContentType
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message

CWT_CLAIMS = 15  # RFC 9597
IAT, CTI = 6, 7  # RFC 8392
SENML_CBOR = 112  # CoAP content-format application/senml+cbor


def make(seed_hex, sequence, iat):
    seed = bytes.fromhex(seed_hex)
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kid = hashlib.sha256(public).digest()[:16]
    # SenML with base name and base time, exercising the resolution rules.
    senml = cbor2.dumps([
        {-2: "interop:", -3: float(iat), 0: "temperature", 1: "Cel", 2: 21.5},
        {0: "humidity", 1: "%RH", 6: 1, 2: 55},
        {0: "door", 4: True},
    ])
    msg = Sign1Message(
        phdr={Algorithm: EdDSA, KID: kid, ContentType: SENML_CBOR,
              CWT_CLAIMS: {IAT: iat, CTI: sequence.to_bytes(8, "big")}},
        payload=senml)
    msg.key = OKPKey(crv=Ed25519, d=seed, x=public)
    return msg.encode(tag=True).hex()


def verify(public_hex, envelope_hex):
    # Checked by hand from RFC 9052 section 4.4 with cbor2 + cryptography: pycose 1.1's decoder
    # rejects every message under current cbor2 (arrays inside tags now decode as tuples).
    tagged = cbor2.loads(bytes.fromhex(envelope_hex))
    if not isinstance(tagged, cbor2.CBORTag) or tagged.tag != 18:
        raise SystemExit("not a tagged COSE_Sign1")
    protected, _unprotected, payload, signature = tagged.value
    header = cbor2.loads(protected)
    if header[1] != -8 or header[3] != SENML_CBOR or CWT_CLAIMS not in header:
        raise SystemExit(f"unexpected protected header {header}")
    sig_structure = cbor2.dumps(["Signature1", protected, b"", payload])
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(signature, sig_structure)
    return json.dumps(cbor2.loads(payload), default=str)


if __name__ == "__main__":
    if sys.argv[1] == "make":
        print(make(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    elif sys.argv[1] == "verify":
        print(verify(sys.argv[2], sys.argv[3]))
    else:
        raise SystemExit(__doc__)
