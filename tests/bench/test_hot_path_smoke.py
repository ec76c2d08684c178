"""The hot-path benchmarks on a tiny configuration: every call type reported, both sides, the
hostile catalogue refused by both parsers. No timing thresholds: they print numbers."""

from __future__ import annotations

from pathlib import Path

from benchmarks import handler_path, parser_micro

REPO = Path(__file__).resolve().parents[2]


def test_parser_micro_reports_every_call_type_and_no_loosening(capsys):
    assert parser_micro.main(["--rounds", "1", "--seconds", "0.01"]) == 0
    out = capsys.readouterr().out
    for name in parser_micro.frames():
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert len([part for part in line.split() if part.replace(".", "").replace("-", "").isdigit()]) >= 2, line
    assert "0 of 26 accepted by msgspec and refused by today's parser" in out
    assert not any(line.strip().startswith("today ACCEPTS") for line in out.splitlines())


def test_handler_path_compares_two_trees_on_every_call_type(capsys):
    # This tree on both sides: the comparison runs, every answer was a CALLRESULT (or it stops).
    assert handler_path.main(["--calls", "120", "--rounds", "1", "--before", str(REPO)]) == 0
    out = capsys.readouterr().out
    for kind in handler_path.TYPES:
        line = next(line for line in out.splitlines() if line.startswith(kind))
        assert line.rstrip().endswith("%"), line
