"""Where the package keeps what it computes: the cache folder (proposals, trunk maps, detection shards)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["default_cache_dir", "resolve_cache_dir"]

APP_NAME = "googlenet-det"


def default_cache_dir() -> Path:
    """``$DET_CACHE_DIR`` when set, else the platform's user cache folder: ``$XDG_CACHE_HOME/googlenet-det`` (default
    ``~/.cache/googlenet-det``) on Linux, ``~/Library/Caches/googlenet-det`` on macOS, ``%LOCALAPPDATA%\\googlenet-det``
    on Windows.  Never inside the installed package."""
    env = os.environ.get("DET_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / APP_NAME
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / APP_NAME
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / APP_NAME


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    """``cache_dir`` itself, or :func:`default_cache_dir` when it is ``None`` / empty."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
