"""Writing files whole or not at all: every file the package writes goes through :func:`atomic_write`.

A temporary file in the destination folder is written, then renamed over the destination, so a reader (or a run
killed mid-write) never sees half a file.  The result gets the permissions of any other new file (``0o666`` less the
process's umask), not the owner-only mode of a temporary file.
"""
from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_text", "atomic_torch_save", "new_file_mode"]


@functools.lru_cache(maxsize=1)
def new_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: ``0o666`` less the umask.  Read once: reading the
    umask sets it for a moment, process-wide, which must not happen beside threads that create files."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, data: bytes | str | Callable[[BinaryIO], Any]) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a function given the open binary file) to ``path`` atomically;
    creates the folder.  Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a string (UTF-8)."""
    return atomic_write(path, text)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)``, atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))
