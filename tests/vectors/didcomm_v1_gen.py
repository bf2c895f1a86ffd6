#!/usr/bin/env python3
"""DIDComm v1 (Aries RFC 0019) envelope vectors built by an independent implementation.

This mirrors ACA-Py's pre-askar `aries_cloudagent/utils/crypto.py` (`encode_pack_message` /
`decode_pack_message`) on top of PyNaCl, i.e. libsodium — the library that ACA-Py and libindy used:

* CEK: 32 random bytes;
* per recipient, authcrypt: `crypto_box(cek, iv24, X25519(recipient), X25519(sender))` and the
  sender's base58 verkey in a `crypto_box_seal`; anoncrypt: `crypto_box_seal(cek, X25519(recipient))`;
  Ed25519 -> X25519 via `crypto_sign_ed25519_{pk,sk}_to_curve25519`;
* content: `crypto_aead_chacha20poly1305_ietf_encrypt` with a 12-byte nonce (despite the header saying
  `xchacha20poly1305_ietf`), AAD = the base64url `protected` string as ASCII bytes;
* base64url *with* padding (ACA-Py's `bytes_to_b64(urlsafe=True)`), `null` sender/iv for anoncrypt.

Usage:
  didcomm_v1_gen.py                      regenerate tests/vectors/didcomm_v1.json (random nonces)
  didcomm_v1_gen.py --unpack FILE [--seed HEX ...]
                                         unpack the envelope in FILE with the given recipient seeds
                                         (default: the vector keys); prints the message on stdout
                                         and `recipient=<b58>` / `sender=<b58|none>` on stderr.
"""

import argparse
import base64
import hashlib
import json
import os
import sys
from collections import OrderedDict

import nacl
import nacl.bindings as sodium
import nacl.utils

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "didcomm_v1.json")

B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = B58_ALPHABET[r] + out
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + out


def b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        n = n * 58 + B58_ALPHABET.index(c)
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + body


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def seed_for(name: str) -> bytes:
    return hashlib.sha256(("idstack didcomm v1 vector key: " + name).encode()).digest()


def keypair(seed: bytes):
    """(verkey 32 bytes, secret 64 bytes = seed || verkey), as libsodium/ACA-Py hold them."""
    return sodium.crypto_sign_seed_keypair(seed)


def pack(message: bytes, to_verkeys, from_secret=None) -> str:
    """ACA-Py's encode_pack_message, step for step."""
    cek = nacl.utils.random(32)
    recips = []
    for target_vk in to_verkeys:
        target_pk = sodium.crypto_sign_ed25519_pk_to_curve25519(target_vk)
        if from_secret:
            sender_vk = b58encode(from_secret[32:]).encode("utf-8")
            enc_sender = sodium.crypto_box_seal(sender_vk, target_pk)
            sk = sodium.crypto_sign_ed25519_sk_to_curve25519(from_secret)
            nonce = nacl.utils.random(sodium.crypto_box_NONCEBYTES)
            enc_cek = sodium.crypto_box(cek, nonce, target_pk, sk)
        else:
            enc_sender = None
            nonce = None
            enc_cek = sodium.crypto_box_seal(cek, target_pk)
        recips.append(
            OrderedDict(
                [
                    ("encrypted_key", b64url(enc_cek)),
                    (
                        "header",
                        OrderedDict(
                            [
                                ("kid", b58encode(target_vk)),
                                ("sender", b64url(enc_sender) if enc_sender else None),
                                ("iv", b64url(nonce) if nonce else None),
                            ]
                        ),
                    ),
                ]
            )
        )
    protected = OrderedDict(
        [
            ("enc", "xchacha20poly1305_ietf"),
            ("typ", "JWM/1.0"),
            ("alg", "Authcrypt" if from_secret else "Anoncrypt"),
            ("recipients", recips),
        ]
    )
    protected_b64 = b64url(json.dumps(protected).encode("ascii"))
    nonce = nacl.utils.random(sodium.crypto_aead_chacha20poly1305_ietf_NPUBBYTES)
    out = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(
        message, protected_b64.encode("ascii"), nonce, cek
    )
    ciphertext, tag = out[: len(message)], out[len(message) :]
    return json.dumps(
        OrderedDict(
            [
                ("protected", protected_b64),
                ("iv", b64url(nonce)),
                ("ciphertext", b64url(ciphertext)),
                ("tag", b64url(tag)),
            ]
        )
    )


def unpack(envelope: str, secrets):
    """ACA-Py's decode_pack_message. `secrets` maps base58 verkey -> 64-byte secret."""
    wrapper = json.loads(envelope)
    protected_b64 = wrapper["protected"]
    recips = json.loads(unb64url(protected_b64).decode("ascii"))
    alg = recips["alg"]
    if alg not in ("Authcrypt", "Anoncrypt"):
        raise ValueError("Unsupported pack algorithm: " + alg)
    for recip in recips["recipients"]:
        kid = recip["header"]["kid"]
        if kid not in secrets:
            continue
        secret = secrets[kid]
        my_pk = sodium.crypto_sign_ed25519_pk_to_curve25519(b58decode(kid))
        my_sk = sodium.crypto_sign_ed25519_sk_to_curve25519(secret)
        enc_cek = unb64url(recip["encrypted_key"])
        sender_enc = recip["header"].get("sender")
        iv = recip["header"].get("iv")
        if sender_enc:
            if alg != "Authcrypt" or not iv:
                raise ValueError("sender without Authcrypt/iv")
            sender_vk = sodium.crypto_box_seal_open(unb64url(sender_enc), my_pk, my_sk).decode("utf-8")
            sender_pk = sodium.crypto_sign_ed25519_pk_to_curve25519(b58decode(sender_vk))
            cek = sodium.crypto_box_open(enc_cek, unb64url(iv), sender_pk, my_sk)
        else:
            if alg != "Anoncrypt" or iv:
                raise ValueError("Anoncrypt with sender/iv")
            sender_vk = None
            cek = sodium.crypto_box_seal_open(enc_cek, my_pk, my_sk)
        nonce = unb64url(wrapper["iv"])
        ct = unb64url(wrapper["ciphertext"]) + unb64url(wrapper["tag"])
        message = sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
            ct, protected_b64.encode("ascii"), nonce, cek
        )
        return message, kid, sender_vk
    raise ValueError("No corresponding recipient key found")


def generate():
    names = ["alice", "bob", "carol"]
    keys = OrderedDict()
    pairs = {}
    for name in names:
        seed = seed_for(name)
        vk, sk = keypair(seed)
        pairs[name] = (vk, sk)
        keys[name] = OrderedDict([("seed", seed.hex()), ("verkey", b58encode(vk))])
    message = json.dumps(
        OrderedDict(
            [
                ("@type", "https://didcomm.org/basicmessage/1.0/message"),
                ("@id", "6f1a3b7e-2c1d-4e8f-9a0b-1c2d3e4f5a6b"),
                ("content", "Hello from PyNaCl / libsodium \u2713"),
            ]
        )
    ).encode("utf-8")
    authcrypt = pack(message, [pairs["bob"][0], pairs["carol"][0]], pairs["alice"][1])
    anoncrypt = pack(message, [pairs["bob"][0]])
    secrets = {keys[n]["verkey"]: pairs[n][1] for n in names}
    # Self-check before writing.
    for env, sender in ((authcrypt, keys["alice"]["verkey"]), (anoncrypt, None)):
        got, _, s = unpack(env, secrets)
        assert got == message and s == sender
    doc = OrderedDict(
        [
            (
                "about",
                "DIDComm v1 / Aries RFC 0019 envelopes made by tests/vectors/didcomm_v1_gen.py "
                "(PyNaCl %s, libsodium; ACA-Py pre-askar pack). Seeds are Ed25519 32-byte seeds, hex."
                % nacl.__version__,
            ),
            ("keys", keys),
            ("message", message.decode("utf-8")),
            (
                "vectors",
                [
                    OrderedDict(
                        [
                            ("name", "authcrypt"),
                            ("sender", "alice"),
                            ("recipients", ["bob", "carol"]),
                            ("envelope", authcrypt),
                        ]
                    ),
                    OrderedDict(
                        [
                            ("name", "anoncrypt"),
                            ("sender", None),
                            ("recipients", ["bob"]),
                            ("envelope", anoncrypt),
                        ]
                    ),
                ]
            ),
        ]
    )
    with open(VECTORS, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print("wrote " + VECTORS)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unpack", metavar="FILE")
    ap.add_argument("--seed", action="append", default=[], metavar="HEX")
    args = ap.parse_args()
    if not args.unpack:
        generate()
        return
    seeds = [bytes.fromhex(s) for s in args.seed]
    if not seeds:
        with open(VECTORS, encoding="utf-8") as f:
            seeds = [bytes.fromhex(k["seed"]) for k in json.load(f)["keys"].values()]
    secrets = {}
    for seed in seeds:
        vk, sk = keypair(seed)
        secrets[b58encode(vk)] = sk
    with open(args.unpack, encoding="utf-8") as f:
        envelope = f.read()
    message, kid, sender = unpack(envelope, secrets)
    sys.stdout.buffer.write(message)
    sys.stdout.flush()
    print("recipient=" + kid, file=sys.stderr)
    print("sender=" + (sender or "none"), file=sys.stderr)


if __name__ == "__main__":
    main()
