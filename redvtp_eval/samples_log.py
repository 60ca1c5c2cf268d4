"""The per-sample log of a job: one JSON line per finished sample, written the moment it finishes.

Where it sits: the lmms-eval adapter appends to it; the job reads it back to resume, to score the
paired baseline and to summarise; at the end the job rewrites it once with targets and scores.

Each line is flushed and fsync'ed, so a crash or Ctrl-C loses at most the sample in flight; a line cut
short by a crash is ignored when reading back. Samples are keyed by (task, doc_id).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class SamplesLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._end_cut_line()

    def _end_cut_line(self) -> None:
        """After a crash mid-write the last line has no newline; close it so the next entry starts clean."""
        if self.path.exists() and self.path.stat().st_size:
            with self.path.open("rb+") as handle:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")

    def read(self) -> list[dict]:
        """Every complete line, first occurrence per (task, doc_id)."""
        if not self.path.exists():
            return []
        entries, seen = [], set()
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            key = (entry["task"], entry["doc_id"])
            if key not in seen:
                seen.add(key)
                entries.append(entry)
        return entries

    def finished(self) -> dict[tuple[str, int], dict]:
        return {(entry["task"], entry["doc_id"]): entry for entry in self.read()}

    def append(self, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def rewrite(self, entries: list[dict]) -> None:
        """Replace the log atomically (write a sibling file, then rename it over the log)."""
        partial = self.path.with_suffix(".jsonl.partial")
        partial.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
        os.replace(partial, self.path)
