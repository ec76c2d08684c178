"""How several workers split the charge points and the files between them."""

import zlib

import pytest

from levity.config import ConfigError, Settings
from levity.store import Store
from levity.workers import (RESTART_DELAY_MAX, _is_upgrade, _request_path, check_layout, check_settings, restart_delay,
                            shard_name, shard_workers, worker_index, worker_settings)


def test_worker_index_is_crc32_of_the_id_so_it_never_changes_between_runs():
    assert worker_index("CP-0001", 4) == zlib.crc32(b"CP-0001") % 4
    assert {worker_index(f"CP{n}", 3) for n in range(100)} == {0, 1, 2}


def test_worker_settings_shard_files_and_limits():
    settings = Settings(database="/var/lib/levity/levity.db", spool_dir="/var/lib/levity/spool", workers=4,
                        max_connections=10_001, spool_max_bytes=400 << 20)
    third = worker_settings(settings, 2)
    assert third.database == "/var/lib/levity/levity.shard2-of-4.db"
    assert third.spool_dir == "/var/lib/levity/spool/shard2-of-4"
    assert third.max_connections == 2501 and third.spool_max_bytes == 100 << 20
    assert third.workers == 1
    assert worker_settings(Settings(database=":memory:", workers=2), 1).database == ":memory:"


@pytest.mark.parametrize("residue, modulus, expected", [(1, 1, [1, 2, 3]), (1, 3, [1, 4, 7]), (3, 3, [3, 6, 9]),
                                                        (2, 2, [2, 4, 6])])
def test_transaction_ids_of_a_worker_keep_its_residue(residue, modulus, expected):
    store = Store(":memory:", (residue, modulus))
    ids = [store.start_transaction("CP", 1, "TAG", 0, "2024-01-15T10:00:00Z", None, "now") for _ in range(3)]
    assert ids == expected


def test_transaction_ids_continue_after_a_restart(tmp_path):
    path = str(tmp_path / "levity.shard1-of-2.db")
    first = Store(path, (2, 2))
    assert first.start_transaction("CP", 1, "T", 0, "t", None, "now") == 2
    first.close()
    again = Store(path, (2, 2))
    assert again.start_transaction("CP", 1, "T", 0, "t", None, "now") == 4


def _files(tmp_path, *names):
    for name in names:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return Settings(database=str(tmp_path / "levity.db"), spool_dir=str(tmp_path / "spool"))


@pytest.mark.parametrize("names, workers, made_with", [
    (["spool/0000000000000001.seg"], 3, "1"),
    (["levity.shard0-of-2.db", "levity.shard1-of-2.db"], 1, "2"),
    (["spool/shard1-of-4/0000000000000001.seg"], 2, "4"),
])
def test_files_of_another_worker_count_are_refused(tmp_path, names, workers, made_with):
    settings = _files(tmp_path, *names)
    with pytest.raises(ConfigError, match=f"made with {made_with} worker"):
        check_layout(Settings(database=settings.database, spool_dir=settings.spool_dir, workers=workers))


def test_a_single_worker_database_is_refused_unless_it_holds_only_api_tokens(tmp_path):
    """With several workers the supervisor keeps the operator API's tokens in the unsharded
    database: that alone is not one worker's state."""
    settings = Settings(database=str(tmp_path / "levity.db"), spool_dir=str(tmp_path / "spool"), workers=2)
    store = Store(settings.database)
    store.add_api_token("ops", "operate", "0" * 64, "now")
    store.close()
    check_layout(settings)
    store = Store(settings.database)
    store.register(["CP001"], "now")
    store.close()
    with pytest.raises(ConfigError, match="made with 1 worker"):
        check_layout(settings)


def test_files_of_the_same_worker_count_are_fine(tmp_path):
    settings = _files(tmp_path, "levity.shard0-of-2.db", "spool/shard0-of-2/0000000000000001.seg", "other.db")
    check_layout(Settings(database=settings.database, spool_dir=settings.spool_dir, workers=2))
    check_layout(Settings(database=str(tmp_path / "fresh" / "levity.db"), spool_dir=str(tmp_path / "s"), workers=1))


def test_workers_need_plain_websockets():
    with pytest.raises(ConfigError, match="TLS"):
        check_settings(Settings(database=":memory:", workers=2, security_profile=3))


def test_request_head_parsing():
    head = b"GET /ocpp/CP-1?x=1 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n\r\n"
    assert _request_path(head) == "/ocpp/CP-1"
    assert _is_upgrade(head)
    assert not _is_upgrade(b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n")
    assert _request_path(b"garbage\r\n") is None


def test_shard_names_are_recognised_only_in_full():
    assert shard_workers(shard_name(2, 4)) == 4
    assert shard_workers(f"levity.{shard_name(0, 3)}.db", "levity.", ".db") == 3
    for name in ("levity.db", "levity.shard0-of-3.db.bak", "other.shard0-of-3.db", "shard-of-2", "xshard0-of-2"):
        assert shard_workers(name, "levity.", ".db") is None, name


def test_a_worker_that_keeps_failing_is_restarted_less_and_less_often():
    delays = [restart_delay(failures) for failures in range(0, 9)]
    assert delays[:5] == [1.0, 1.0, 2.0, 4.0, 8.0]  # 0: it had been running fine
    assert delays[-1] == RESTART_DELAY_MAX
    assert delays == sorted(delays)
