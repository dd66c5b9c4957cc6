"""Files written whole or not at all, and their checksums.

A writer puts its bytes in `<path>.tmp` and renames it over `<path>` (os.replace is atomic on one file
system), so a reader never sees half a file and an interrupted writer leaves the old one in place.

Entry point: `sha256_file`, `write_text`.
"""
from __future__ import annotations

import hashlib
import os


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text(path: str, text: str) -> None:
    """Write text to path atomically (through path.tmp)."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
