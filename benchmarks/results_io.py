"""Writing a benchmark's JSON record (shared by the benchmark scripts).

Every record carries where it was measured: the commit of the tree (``+dirty`` when it had
uncommitted changes), the torch version, torch's thread count and the date. Non-finite numbers
are written as null, so every file is valid JSON.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess

from kernel.jsonsafe import finite_or_none


def provenance(threads: int | None = None) -> dict:
    """Commit, torch version, thread count (``threads``: what the measured processes used, when
    not this one's) and UTC date of this measurement."""
    import torch

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        commit += "+dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"commit": commit, "torch": torch.__version__, "threads": threads or torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}


def write_record(path: str, record: dict) -> None:
    # Provenance before the file is opened: truncating a tracked result would mark the tree dirty.
    text = json.dumps(finite_or_none(dict(record, measured=provenance(record.get("threads")))), indent=2,
                      allow_nan=False)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")
