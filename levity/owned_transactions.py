"""What a Levity instance on PostgreSQL keeps in memory about the transactions of the chargers
connected to it, so the hot path does not ask the database (levity/store_pg.py).

A charger has one connection across all instances (the newest wins: levity/cluster.py), and a
transaction's meterStop and its meter values come only from its charger, so while a charger is
connected here no other instance writes them. From the claim of a connection to its end this
instance can answer:

- meter_stop: for every MeterValues of a transaction (the late-register check), known once read
  or written here;
- energy_registers: for a stop's checks, complete only for a transaction started here (every
  meter value of it went through this instance).

- load_transaction: a StopTransaction's row, for a transaction started here (the row as this
  instance wrote it, while it stays open here).

What others may change (an operator closing a transaction as abandoned, from the command line or
any instance's API) is not known here: a stop decided from memory is written only if its row is
still open (levity/store.py's stop_transaction), and when another process closed it meanwhile
the charger is told to resend, and the resend reads the row. A new claim (the charger
reconnected, here or elsewhere first) starts from nothing, and so does a write the database
refused or a durable commit that failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from levity.store import Transaction

KEPT_PER_CHARGE_POINT = 16  # transactions remembered per charger; older ones are read again


@dataclass
class Known:
    meter_stop: int | None = None
    registers: list[tuple[str, str | None]] | None = None  # None: not every meter value was seen here
    row: "Transaction | None" = None  # while open: the row as this instance started it


class OwnedTransactions:
    """charge point id -> transaction id -> Known, for the chargers connected here."""

    def __init__(self) -> None:
        self._owned: dict[str, dict[int, Known]] = {}
        self._charger_of: dict[int, str] = {}  # a stop names only the transaction
        self.hits = 0  # answers given without a database round trip (levity_store_owned_hits)

    def claim(self, charge_point_id: str) -> None:
        self.release(charge_point_id)
        self._owned[charge_point_id] = {}

    def connected(self, charge_point_id: str) -> bool:
        """Claimed here and not released since."""
        return charge_point_id in self._owned

    def release(self, charge_point_id: str) -> None:
        for transaction_id in self._owned.pop(charge_point_id, ()):
            self._charger_of.pop(transaction_id, None)

    def forget_all(self) -> None:
        for known in self._owned.values():
            known.clear()
        self._charger_of.clear()

    def forget(self, transaction_id: int) -> None:
        charge_point_id = self._charger_of.pop(transaction_id, None)
        if charge_point_id is not None:
            self._owned[charge_point_id].pop(transaction_id, None)

    def get(self, charge_point_id: str, transaction_id: int) -> Known | None:
        known = self._owned.get(charge_point_id)
        entry = known.get(transaction_id) if known is not None else None
        if entry is not None:
            self.hits += 1
        return entry

    def remember(self, charge_point_id: str, transaction_id: int, entry: Known) -> None:
        """Kept only while the charger is connected here, and never under a charger other than
        the one that holds it (a charger naming another's transaction id learns nothing)."""
        known = self._owned.get(charge_point_id)
        if known is None or self._charger_of.get(transaction_id, charge_point_id) != charge_point_id:
            return
        self.forget(transaction_id)
        known[transaction_id] = entry
        self._charger_of[transaction_id] = charge_point_id
        if len(known) > KEPT_PER_CHARGE_POINT:
            self.forget(next(iter(known)))

    def started(self, charge_point_id: str, transaction_id: int, row: "Transaction | None" = None) -> None:
        self.remember(charge_point_id, transaction_id, Known(registers=[], row=row))

    def stopped(self, transaction_id: int, meter_stop: int | None) -> None:
        """A stop written (or undone: None) by this instance; its row is read again after either."""
        charge_point_id = self._charger_of.get(transaction_id)
        if charge_point_id is not None:
            entry = self._owned[charge_point_id][transaction_id]
            entry.meter_stop, entry.row = meter_stop, None

    def closed(self, transaction_id: int) -> None:
        """Closed as abandoned by this instance: its row is read again."""
        charge_point_id = self._charger_of.get(transaction_id)
        if charge_point_id is not None:
            self._owned[charge_point_id][transaction_id].row = None

    def open_row(self, transaction_id: int) -> "Transaction | None":
        """The row of an open transaction started here, while its charger is connected here."""
        charge_point_id = self._charger_of.get(transaction_id)
        entry = self._owned[charge_point_id].get(transaction_id) if charge_point_id is not None else None
        if entry is None or entry.row is None:
            return None
        self.hits += 1
        return entry.row

    def add_registers(self, charge_point_id: str, transaction_id: int, registers: list[tuple[str, str | None]]) -> None:
        known = self._owned.get(charge_point_id)
        entry = known.get(transaction_id) if known is not None else None
        if entry is not None and entry.registers is not None:
            entry.registers += registers
