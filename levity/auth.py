"""Charger authentication for OCPP security profiles 1-3.

Profile 1/2: HTTP Basic auth, user = charge point id, password = the charger's
AuthorizationKey, stored as a salted scrypt hash. Profile 3: a TLS client certificate
whose subject CN is the charge point id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                                   dklen=len(digest) // 2)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(candidate.hex(), digest)


def generate_authorization_key() -> str:
    """A 40-character key, the longest AuthorizationKey OCPP 1.6 security allows."""
    return secrets.token_hex(20)


def parse_basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class CredentialCache:
    """Remembers the last password each charger proved, as a keyed digest, so that a
    reconnect storm of thousands of chargers does not cost thousands of scrypt runs."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._proven: dict[str, bytes] = {}

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._key, password.encode(), hashlib.sha256).digest()

    def known(self, charge_point_id: str, password: str) -> bool:
        proven = self._proven.get(charge_point_id)
        return proven is not None and hmac.compare_digest(proven, self._digest(password))

    def remember(self, charge_point_id: str, password: str) -> None:
        self._proven[charge_point_id] = self._digest(password)

    def forget(self, charge_point_id: str) -> None:
        self._proven.pop(charge_point_id, None)


def certificate_common_name(peercert: dict | None) -> str | None:
    """The subject CN of a certificate as ssl.SSLSocket.getpeercert() returns it."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None
