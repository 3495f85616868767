"""Output paths checked before the work starts, so that no result is lost to a bad path."""

from __future__ import annotations

import os
from pathlib import Path

from vimstm.errors import ConfigError


def _probe(folder: Path, flag: str, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".vimstm-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(f"{flag} {what} cannot be written (in {folder}: {reason}); choose a "
                          "writable path") from None


def check_output_file(path: str | Path, flag: str) -> Path:
    """Create ``path``'s folder if needed and check that a file can be written there."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {p}: is a folder; give a file name")
    _probe(p.parent, flag, str(p))
    return p


def check_output_dir(path: str | Path, flag: str) -> Path:
    """Create the folder ``path`` if needed and check that files can be written in it."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {p}: is a file; give a folder")
    _probe(p, flag, str(p))
    return p
