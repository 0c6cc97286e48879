"""Errors for bad input, and atomic file writes.

Every problem with user input is raised as :class:`InputError`, whose message is one line that
names the file, the field and what is wrong. The CLIs turn it into that line on stderr and a
non-zero exit (see :func:`cosmoinfer.cli.common.run_cli`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


class InputError(ValueError):
    """Bad user input: ``InputError(path, what)`` renders as ``"<path>: <what>"`` on one line.

    ``InputError(text)`` (one argument) is how torch rebuilds an error raised in a DataLoader
    worker: the text is its "Caught InputError in DataLoader worker ..." traceback, whose last line
    holds the original message, which is kept (so a bad map read by a worker is still one line).
    """

    def __init__(self, path: str | os.PathLike | None, what: str | None = None):
        if what is None:  # rebuilt from one text: torch re-raising a DataLoader worker's error
            lines = [ln for ln in str(path).splitlines() if ln.strip()]
            last = lines[-1].split("InputError: ", 1)[-1] if lines else ""
            self.path, self.what = None, " ".join(last.split())  # its last line is the original message
        else:
            self.path = None if path is None else str(path)
            self.what = " ".join(str(what).split())  # always one line
        super().__init__(self.what if self.path is None else f"{self.path}: {self.what}")


def file_mode() -> int:
    """The permissions a new file gets from ``open()`` under the current umask (``0o644`` for umask 022).

    Files made by ``tempfile.mkstemp`` (atomic writes) are ``0o600``; chmod them to this before renaming.
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The temporary file lives in the same folder (same file system), so the final ``os.replace``
    is atomic: readers see either the old file or the complete new one, never a partial write.
    ``suffix`` defaults to the suffix of ``path`` (libraries such as numpy append their own).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=(path.suffix if suffix is None else suffix) + ".tmp",
        dir=path.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, file_mode())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def ensure_writable_dir(path: str | os.PathLike, key: str = "out_dir") -> Path:
    """Refuse an output folder that cannot be written, before any work is done; returns it as a Path.

    ``path`` may not exist yet (it is created later, by whoever writes there); then its nearest
    existing ancestor must be a writable folder. Raises :class:`InputError` naming ``key`` (the config
    key or argument that chose the folder) when ``path`` is an existing file, lies below a file, or
    the folder that would hold it is not writable (permissions, a read-only file system).
    """
    target = Path(os.path.abspath(os.path.expanduser(str(path))))
    if target.exists() and not target.is_dir():
        raise InputError(key, f"{target} is a file, not a folder; set {key} to a folder")
    probe = target
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(key, f"{target} cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "the folder" if probe == target else f"its nearest existing folder {probe}"
        raise InputError(key, f"{target}: {where} is not writable (permission denied or a read-only file "
                              f"system); set {key} to a folder you can write to")
    return target
