"""What a Levity process keeps in memory about its connected chargers' transactions
(levity/owned_transactions.py): only its own writes, only while the charger is connected, and
never under another charger's name."""

from levity.owned_transactions import Known, OwnedTransactions


def test_a_started_transaction_is_known_until_its_charger_disconnects():
    owned = OwnedTransactions()
    owned.claim("CP-A")
    owned.started("CP-A", 7)
    owned.add_registers("CP-A", 7, [("1200", "Wh")])
    owned.stopped(7, 1500)
    known = owned.get("CP-A", 7)
    assert (known.meter_stop, known.registers) == (1500, [("1200", "Wh")])
    owned.release("CP-A")
    assert owned.get("CP-A", 7) is None
    owned.claim("CP-A")
    assert owned.get("CP-A", 7) is None, "a new connection starts from the database"


def test_a_charger_naming_another_chargers_transaction_changes_nothing():
    owned = OwnedTransactions()
    owned.claim("CP-A")
    owned.claim("CP-B")
    owned.started("CP-A", 7)
    owned.remember("CP-B", 7, Known(meter_stop=None))  # CP-B sent MeterValues with CP-A's id
    assert owned.get("CP-B", 7) is None
    owned.stopped(7, 1500)
    assert owned.get("CP-A", 7).meter_stop == 1500


def test_nothing_is_kept_for_a_charger_not_connected_here():
    owned = OwnedTransactions()
    owned.remember("CP-A", 7, Known(meter_stop=10))
    owned.started("CP-A", 8)
    assert owned.get("CP-A", 7) is None and owned.get("CP-A", 8) is None
