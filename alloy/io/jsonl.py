"""JSON Lines input: one JSON object per line, every bad line reported with its file and line number."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from alloy.errors import AlloyError


def read_jsonl_objects(path: str | Path, what: str = "a JSON object") -> Iterator[tuple[int, dict]]:
    """(line number, record) of each non-blank line of `path`; AlloyError naming the file and line
    for a line that is not valid JSON or not an object (`what` says what an object should be)."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AlloyError(f"{path}:{lineno}: not valid JSON ({exc.msg}); each line must be one JSON object") from None
            if not isinstance(record, dict):
                raise AlloyError(f"{path}:{lineno}: expected {what}")
            yield lineno, record
