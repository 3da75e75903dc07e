"""Writing output files safely: check the name first, then write to a temporary file and rename it."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Callable, Sequence

from .errors import UserError


def checked_output_path(path: str | os.PathLike, suffixes: Sequence[str]) -> Path:
    """``path`` as a Path, after checking its extension, that its folder exists and is writable, that it is not
    a folder itself, and that it is not one of a run directory's own files (which it would destroy)."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise UserError(f"cannot write '{path}': the extension must be one of {', '.join(suffixes)}")
    if path.is_dir():
        raise UserError(f"cannot write '{path}': it is a folder; give a file name")
    if not path.parent.is_dir():
        raise UserError(f"cannot write '{path}': folder '{path.parent}' does not exist; create it first")
    if _is_run_file(path):
        raise UserError(f"cannot write '{path}': it is a file of the run in '{path.parent}', which this would "
                        "destroy; choose another name")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"cannot write '{path}': folder '{path.parent}' is not writable")
    return path


def _is_run_file(path: Path) -> bool:
    """Whether ``path`` names one of the files of a run directory (checkpoint pair, log), which another command's
    output would destroy. Compared without case: case-insensitive file systems (macOS, Windows) are common."""
    from .training import checkpoint_exists
    from .training.checkpoint import JSON_NAME, PREVIOUS_TENSORS_NAME, TENSORS_NAME
    from .training.trainer import LOG_NAME

    names = {n.lower() for n in (JSON_NAME, TENSORS_NAME, PREVIOUS_TENSORS_NAME, LOG_NAME)}
    return path.name.lower() in names and checkpoint_exists(path.parent)


_TOKEN_BYTES = 6  # the random part of a temporary file's name: 12 hex digits


def stale_temporaries(path: Path) -> list[Path]:
    """The temporary files that :func:`write_atomically` leaves next to ``path`` when it is killed before its rename
    (exactly its names, files only)."""
    path = Path(path)
    pattern = re.compile(r"\.%s\.[0-9a-f]{%d}\.tmp" % (re.escape(path.name), 2 * _TOKEN_BYTES))
    if not path.parent.is_dir():
        return []
    return [p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink()]


def write_atomically(path: Path, write: Callable[[object], None], *, durable: bool = False) -> None:
    """Call ``write(file_object)`` on a fresh temporary file next to ``path``, then move it onto ``path``:
    readers, and a crash, see the old file or the new one, never a mix.

    The temporary file lives in the same folder so that :func:`os.replace` is a rename on one file system
    (atomic); it is opened with plain ``open`` (not mkstemp) so that it gets the usual umask permissions.
    ``durable`` (checkpoints, the training log): the file is fsync'ed before the rename, so that the rename
    cannot reach the disk before the data, and the folder after it, so that the rename itself survives a power
    cut. An OSError (a full disk, a read-only folder) is a one-line :class:`UserError`; no temporary file stays.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(_TOKEN_BYTES)}.tmp")
    try:
        with open(tmp, "xb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    except OSError as error:  # a full disk, a read-only or vanished folder, a folder in the way
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write '{path}': {error.strerror or error}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); directories cannot be opened for fsync on Windows, where it is skipped."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_together(outputs: Sequence[tuple[Path, Callable[[Path], None]]]) -> None:
    """All or nothing for several files: ``write(partial)`` for each ``(path, write)`` to a hidden file next to
    ``path`` (same extension, so writers that check it accept it), then every partial file is renamed onto its
    path; if any write fails, none of the paths changes and the partial files are removed."""
    token = secrets.token_hex(4)
    partial = [path.with_name(f".{path.stem}.{token}.partial{path.suffix}") for path, _ in outputs]
    try:
        for (_, write), tmp in zip(outputs, partial):
            write(tmp)
        for (path, _), tmp in zip(outputs, partial):
            os.replace(tmp, path)
    except BaseException:
        for tmp in partial:
            tmp.unlink(missing_ok=True)
        raise
