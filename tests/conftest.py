import json
from pathlib import Path

import pytest

from tests.support.levity_process import LevityProcess


@pytest.fixture
def levity(tmp_path):
    """Factory for real `levity serve` processes; all are stopped at the end of the test."""
    started: list[LevityProcess] = []

    def make(env: dict[str, str] | None = None, start: bool = True, workdir: Path | None = None) -> LevityProcess:
        directory = workdir or tmp_path / f"levity{len(started)}"
        directory.mkdir(exist_ok=True)
        process = LevityProcess(directory, env)
        started.append(process)
        return process.start() if start else process

    yield make
    for process in started:
        process.kill()


def read_audit_file(path: Path) -> list[dict]:
    """The records of a JSON-lines audit file."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
