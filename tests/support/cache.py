"""The cache root of slow builds, outside the repository: the same folder as
tests/cluster/build-binaries.sh uses, `${FLOWKEEPER_CACHE:-${XDG_CACHE_HOME:-~/.cache}/flowkeeper}`."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    if "FLOWKEEPER_CACHE" in os.environ:
        return Path(os.environ["FLOWKEEPER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flowkeeper"
