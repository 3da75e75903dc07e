"""Writing output files safely: check the name first, then write to a temporary file and rename it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable, Sequence

from .errors import UserError


def checked_output_path(path: str | os.PathLike, suffixes: Sequence[str]) -> Path:
    """``path`` as a Path, after checking its extension and that its folder exists."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise UserError(f"cannot write '{path}': the extension must be one of {', '.join(suffixes)}")
    if not path.parent.is_dir():
        raise UserError(f"cannot write '{path}': folder '{path.parent}' does not exist; create it first")
    return path


def write_atomically(path: Path, write: Callable[[object], None]) -> None:
    """Call ``write(file_object)`` on a fresh temporary file next to ``path``, then move it onto ``path``.

    The temporary file lives in the same folder so that :func:`os.replace` is a rename on one file system
    (atomic); it is opened with plain ``open`` (not mkstemp) so that it gets the usual umask permissions.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
