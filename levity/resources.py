"""Where the shared data files live: inside the wheel, or at the top of a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGED = Path(__file__).parent / "_data"
_CHECKOUT = Path(__file__).resolve().parent.parent


def resource_dir(name: str) -> Path:
    """Return the directory `name` (templates, profiles, share) of this installation."""
    packaged = _PACKAGED / name
    if packaged.is_dir():
        return packaged
    return _CHECKOUT / name
