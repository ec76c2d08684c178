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
import time
from collections import OrderedDict

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
    reconnect storm of thousands of chargers does not cost thousands of scrypt runs.

    Each entry is tied to the stored hash it was proven against: once the password is
    rotated (`levity charge-points set-password`, possibly from another process) the stored
    hash differs and the old password is checked, and refused, like any other."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._proven: dict[str, bytes] = {}

    def _digest(self, password: str, stored_hash: str) -> bytes:
        return hmac.new(self._key, stored_hash.encode() + b"\0" + password.encode(), hashlib.sha256).digest()

    def known(self, charge_point_id: str, password: str, stored_hash: str) -> bool:
        proven = self._proven.get(charge_point_id)
        return proven is not None and hmac.compare_digest(proven, self._digest(password, stored_hash))

    def remember(self, charge_point_id: str, password: str, stored_hash: str) -> None:
        self._proven[charge_point_id] = self._digest(password, stored_hash)

    def forget(self, charge_point_id: str) -> None:
        self._proven.pop(charge_point_id, None)


class FailureLimiter:
    """Counts failed attempts per key (a charge point id, a remote address) in a leaky
    bucket: `per_minute` failures are allowed at once, then one more each 60/per_minute s.

    The table keeps at most `max_keys` keys, least recently failed first out, so a flood
    from many addresses costs bounded memory (an evicted key starts again from zero)."""

    def __init__(self, per_minute: int, max_keys: int = 65536, clock=time.monotonic):
        self.burst = float(per_minute)
        self.leak_per_second = per_minute / 60.0
        self.max_keys = max_keys
        self._clock = clock
        self._levels: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (level, when)

    def _level(self, key: str, now: float) -> float:
        entry = self._levels.get(key)
        if entry is None:
            return 0.0
        level, when = entry
        return max(0.0, level - (now - when) * self.leak_per_second)

    def blocked(self, key: str) -> bool:
        """True when `key` has used up its failures: refuse without checking the password."""
        return self._level(key, self._clock()) + 1 > self.burst

    def retry_after(self, key: str) -> int:
        """Seconds until one more attempt is allowed."""
        excess = self._level(key, self._clock()) + 1 - self.burst
        return max(1, int(excess / self.leak_per_second + 0.999))

    def failed(self, key: str) -> None:
        now = self._clock()
        self._levels[key] = (self._level(key, now) + 1, now)
        self._levels.move_to_end(key)
        while len(self._levels) > self.max_keys:
            self._levels.popitem(last=False)

    def __len__(self) -> int:
        return len(self._levels)


def certificate_common_name(peercert: dict | None) -> str | None:
    """The subject CN of a certificate as ssl.SSLSocket.getpeercert() returns it."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None
