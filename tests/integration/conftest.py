"""Fixtures of the integration tests that need a real PostgreSQL (tests/support/postgres.py)."""

from __future__ import annotations

import pytest

from tests.support import postgres
from tests.support.postgres import levity_command


def _started_postgres():
    reason = postgres.unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = postgres.PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    """One server for the session; each test makes its own database on it."""
    yield from _started_postgres()


@pytest.fixture
def own_postgres_server():
    """A server of the test's own, for a test that stops it."""
    yield from _started_postgres()


@pytest.fixture
def database(postgres_server):
    """A fresh database with Levity's schema; its URL (password included)."""
    url = postgres_server.new_database()
    upgrade = levity_command("db", "upgrade", database=url)
    assert upgrade.returncode == 0, upgrade.stderr
    return url


@pytest.fixture
def instances(levity, database):
    """Factory: `levity serve` instances sharing the test's database."""
    def make(count: int = 1, env: dict[str, str] | None = None):
        return [levity({"LEVITY_DATABASE": database, **(env or {})}) for _ in range(count)]
    return make
