"""The order a PostgreSQL group commit sends its writes in (levity/store_rows.py): rows of one
kind are combined only where no write on the same row lies between them."""

from __future__ import annotations

import psycopg
import pytest

from levity.store_pg import START_ROWS, STATUS_ROWS, STOP_ROWS
from levity.store_rows import Combined, Write, combine, one_statement


def start(transaction_id: int) -> Write:
    return Write(START_ROWS, (transaction_id, "CP", 1, "TAG", 0, "t", None, "now", None), key=transaction_id)


def stop(transaction_id: int) -> Write:
    return Write(STOP_ROWS, (10, "t", "Local", None, "now", None, None, transaction_id), key=transaction_id)


def shape(statements) -> list:
    return [(s.rows.table, [w.params[0] if w.sql is START_ROWS else w.params[-1] for w in s.writes])
            if isinstance(s, Combined) else s.sql if isinstance(s.sql, str) else (s.sql.table, s.key)
            for s in statements]


def test_starts_and_stops_of_other_transactions_combine_around_each_other():
    statements = combine([start(1), stop(7), start(2), stop(1), stop(8)])
    assert [type(s) for s in statements] == [Combined, Combined]
    assert [s.rows for s in statements] == [START_ROWS, STOP_ROWS]  # the start of 1 before its stop
    assert shape(statements) == [("transactions", [1, 2]), ("transactions", [7, 1, 8])]


def test_a_write_never_moves_before_one_on_its_row():
    # The stop of 5 cannot join the stops sent before the start of 5.
    statements = combine([stop(7), start(5), stop(5)])
    assert [s.sql.table if isinstance(s, Write) else s.rows.table for s in statements] == ["transactions"] * 3
    assert [s.sql for s in statements] == [STOP_ROWS, START_ROWS, STOP_ROWS]


def test_a_plain_statement_on_the_table_closes_the_combined_ones():
    delete = Write("DELETE FROM transactions WHERE id = %s AND stopped_at IS NULL", (2,))
    statements = combine([start(1), delete, start(3)])
    assert [s.sql for s in statements] == [START_ROWS, delete.sql, START_ROWS]


def test_statuses_of_one_connector_combine_last_one_wins_other_tables_unaffected():
    def status(connector: int, value: str) -> Write:
        return Write(STATUS_ROWS, ("CP", connector, value, "NoError", None, None, "t", "now"))

    statements = combine([status(1, "Available"), start(1), status(2, "Faulted"), status(1, "Charging")])
    assert [type(s) for s in statements] == [Combined, Write]
    combined = statements[0]
    assert [w.params[2] for w in combined.writes] == ["Available", "Faulted", "Charging"]
    deduplicated = {STATUS_ROWS.key_of(w.params): w.params[2] for w in combined.writes}
    assert deduplicated == {("CP", 1): "Charging", ("CP", 2): "Faulted"}


def test_rows_json_cannot_carry_are_refused_as_the_driver_refuses_a_value():
    rows = [("CP", 1, "Available", "NoError", None, None, "t", "now"),
            ("CP", 2, object(), "NoError", None, None, "t", "now")]
    with pytest.raises(psycopg.DataError, match="cannot send these rows"):
        STATUS_ROWS.statement(rows)
    sql, params = STATUS_ROWS.statement(rows[:1])  # one row: its values, as a plain statement
    assert "VALUES" in sql and params == rows[0]


def test_statements_on_tables_of_their_own_become_one_and_never_two_on_one_table():
    status = Write(STATUS_ROWS, ("CP", 1, "Available", "NoError", None, None, "t", "now"))
    sql, params = one_statement([start(1), status])
    assert sql.startswith("WITH w0 AS (INSERT INTO transactions") and "INSERT INTO connectors" in sql
    assert params == [*start(1).params, *status.params]
    assert one_statement([start(1), stop(2)]) is None  # one table: the stop would not see the start
    assert one_statement([Write("UPDATE charge_points SET registered = 0 WHERE id = %s", [("CP",)], many=True)]) is None
