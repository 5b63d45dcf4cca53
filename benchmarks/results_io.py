"""Writing a benchmark's JSON record (shared by the benchmark scripts)."""
from __future__ import annotations

import json
import os


def write_record(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {path}")
