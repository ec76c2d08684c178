"""A PostgreSQL group commit in few statements (levity/store_pg.py): the queued writes of one kind
(status upserts, transaction starts, stops, meter rows ...) become ONE statement over their rows
instead of one statement per write, as much of the driver's and the server's work is per
statement (docs/scaling.md, "Speed on PostgreSQL"). The rows go as one JSON array of arrays,
read back as a table v(column, ...) with each value cast to its column's type:
`... FROM (SELECT (r.v->>0)::text AS charge_point_id, (r.v->>1)::integer AS connector_id, ...
FROM jsonb_array_elements(%s::jsonb) AS r(v)) AS v`. The json module encodes them in C; psycopg
dumps an array parameter element by element in Python, which cost this process twice as much
CPU per row (and the server no less: benchmarks/bench_store.py --postgresql).

The final rows are those the writes one by one would leave: a write moves only to the place
of an earlier write of its kind with no write touching the same row between them (writes to
other tables commute: the schema has no foreign keys or triggers), and a batch's upserts of one
row keep the last one (`last_wins`: they set every column) or go in separate statements.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import psycopg

_TABLE = re.compile(r"\s*(?:INSERT INTO|UPDATE|DELETE FROM)\s+(\w+)", re.IGNORECASE)


@dataclass(eq=False)
class Rows:
    """A kind of write made of one row of values: `sql` with `{rows}` where the rows go as a
    table v(column, ...) of `columns` ((name, PostgreSQL type), in the row's order)."""

    sql: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]  # the columns naming the row of `table` a write changes
    last_wins: bool = False  # a later write of one row replaces an earlier one (it sets every column)
    table: str = field(init=False)
    many_rows: str = field(init=False)  # the statement for rows as one JSON parameter
    one_row: str = field(init=False)  # the statement for a single row, a placeholder per value
    _key_at: tuple[int, ...] = field(init=False)

    def __post_init__(self):
        self.table = _TABLE.match(self.sql).group(1)
        values = ", ".join(f"(r.v->>{i})::{sql_type} AS {name}" for i, (name, sql_type) in enumerate(self.columns))
        self.many_rows = self.sql.format(rows=f"(SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS r(v)) AS v")
        names = ", ".join(name for name, _ in self.columns)
        placeholders = ", ".join(f"%s::{sql_type}" for _, sql_type in self.columns)
        self.one_row = self.sql.format(rows=f"(VALUES ({placeholders})) AS v({names})")
        self._key_at = tuple([name for name, _ in self.columns].index(name) for name in self.key)

    def key_of(self, row: tuple) -> tuple:
        return tuple(row[i] for i in self._key_at)

    def statement(self, rows: list[tuple]) -> tuple[str, tuple]:
        """The statement and its parameters for these rows (one row: its values, which costs
        less than a JSON document to read back)."""
        if len(rows) == 1:
            return self.one_row, rows[0]
        try:
            return self.many_rows, (json.dumps(rows),)
        except (TypeError, ValueError) as exc:  # as the driver refuses a value it cannot send: row by row then
            raise psycopg.DataError(f"cannot send these rows as JSON: {exc}") from None


class Write(NamedTuple):
    """A queued write: a statement and its parameters, or a row of a kind (sql: Rows, params: the row)."""

    sql: str | Rows
    params: Any
    many: bool = False  # params: the rows of an executemany
    key: int | None = None  # the transaction it belongs to (its durable commit)

    @property
    def writes(self) -> tuple["Write", ...]:
        return (self,)

    @property
    def table(self) -> str:
        return self.sql.table if isinstance(self.sql, Rows) else _TABLE.match(self.sql).group(1)

    def statement(self) -> tuple[str, Any]:
        return self.sql.statement([self.params]) if isinstance(self.sql, Rows) else (self.sql, self.params)

    def send(self, db: psycopg.Connection) -> psycopg.Cursor | None:
        if self.many:
            db.cursor().executemany(self.sql, self.params)
            return None
        return db.execute(*self.statement())

    def describe(self) -> str:
        """The statement's first words, for a log line (never its values)."""
        sql = self.sql.sql if isinstance(self.sql, Rows) else self.sql
        return " ".join(sql.split()[:3])


class Combined(NamedTuple):
    """Writes of one kind sent as one statement."""

    rows: Rows
    writes: list[Write]
    many = False  # one statement (autocommit keeps it one transaction)

    @property
    def table(self) -> str:
        return self.rows.table

    def statement(self) -> tuple[str, Any]:
        rows = [write.params for write in self.writes]
        if self.rows.last_wins:  # ON CONFLICT cannot change one row twice in a statement
            rows = list({self.rows.key_of(row): row for row in rows}.values())
        return self.rows.statement(rows)

    def send(self, db: psycopg.Connection) -> psycopg.Cursor:
        return db.execute(*self.statement())


def one_statement(statements: list[Write | Combined]) -> tuple[str, list] | None:
    """The statements as one, each but the last a data-modifying WITH query, when each changes a
    table of its own: they all see the state before the statement, which is what they would
    see one after another, as none reads a table another changes. A batch in one statement
    needs no BEGIN and COMMIT either (autocommit makes it one transaction). None when they
    cannot be one (two change one table, an executemany)."""
    tables = {statement.table for statement in statements}
    if len(tables) < len(statements) or any(statement.many for statement in statements):
        return None
    texts, params = [], []
    for statement in statements:
        sql, values = statement.statement()
        if not isinstance(values, (tuple, list)):
            return None  # named parameters: not merged
        texts.append(sql)
        params.extend(values)
    *queries, last = texts
    if not queries:
        return last, params
    return "WITH " + ", ".join(f"w{i} AS ({sql})" for i, sql in enumerate(queries)) + " " + last, params


def combine(writes: list[Write]) -> list[Write | Combined]:
    """The writes as statements in an order that leaves the same rows, each kind of Rows
    combined as far as that allows."""
    statements: list[Write | Combined] = []
    open_at: dict[Rows, int] = {}  # kind -> where its latest statement is
    any_row_at: dict[str, int] = {}  # table -> the latest plain statement on it (it may touch any row)
    row_at: dict[tuple, int] = {}  # (table, key) -> the latest statement on that row
    for write in writes:
        kind = write.sql
        if not isinstance(kind, Rows):
            statements.append(write)
            any_row_at[write.table] = len(statements) - 1
            continue
        row = (kind.table, kind.key_of(write.params))
        after = max(any_row_at.get(kind.table, -1), row_at.get(row, -1))  # it must stay behind these
        at = open_at.get(kind)
        if at is not None and (at > after or at == after and kind.last_wins):
            joined = statements[at]
            if isinstance(joined, Write):
                joined = statements[at] = Combined(kind, [joined])
            joined.writes.append(write)
        else:
            statements.append(write)
            at = open_at[kind] = len(statements) - 1
        row_at[row] = at
    return statements
