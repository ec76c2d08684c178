"""Operator API tokens: bearer tokens with a role, of which only a hash is stored.

A token is 32 random bytes (256 bits) from the operating system's CSPRNG. Guessing one is
hopeless, so a fast unsalted SHA-256 is the right hash here: salts and slow hashes (scrypt,
argon2) exist to protect low-entropy passwords from dictionary attacks, which a 256-bit random
token is not open to, and a fast hash lets every request be checked with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

ROLES = ("read", "operate")
TOKEN_PREFIX = "lvt_"  # recognisable in a leaked file or a secret scanner
NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """Checks bearer tokens against the hashes in Levity's database (levity.store.Store)."""

    def __init__(self, store):
        self.store = store

    def principal(self, token: str) -> tuple[str, str] | None:
        """(name, role) of a valid token, else None."""
        if not token or len(token) > 256:
            return None
        return self.store.api_token(token_hash(token))

    def create(self, name: str, role: str) -> str:
        """A new token (returned once, never stored); ValueError for a bad name/role or a taken name."""
        import sqlite3

        from levity.audit.events import iso_utc

        if not NAME.fullmatch(name):
            raise ValueError("a token NAME has 1-64 letters, digits and . _ @ - (it is recorded as requested_by)")
        if role not in ROLES:
            raise ValueError(f"--role must be one of {', '.join(ROLES)}")
        token = new_token()
        try:
            self.store.add_api_token(name, role, token_hash(token), iso_utc(time.time_ns()))
        except (sqlite3.IntegrityError, KeyError):  # KeyError: PostgreSQL's store
            raise ValueError(f"a token named {name!r} exists: revoke it first or choose another name") from None
        return token
