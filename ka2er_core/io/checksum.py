"""The sha256 of a file: bundles record one per weight file, importers one per checkpoint read."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import UnreadableFileError


def sha256(path: Path) -> str:
    """Hex digest of the file ``path``, read in 1 MiB blocks; an unreadable file is an
    :class:`~ka2er_core.errors.UnreadableFileError` naming it."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise UnreadableFileError(f"unreadable ({err.strerror or err})", path=path) from None
    return digest.hexdigest()
