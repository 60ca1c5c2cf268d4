"""The per-sample log of a job: one JSON line per finished sample, written the moment it finishes.

Where it sits: the lmms-eval adapter appends to it; the job reads it back to resume, to score the
paired baseline and to summarise; at the end the job rewrites it once with targets and scores.

Each line is flushed and fsync'ed, so a crash or Ctrl-C loses at most the sample in flight; a line cut
short by a crash is ignored when reading back. Samples are keyed by (task, doc_id).

Under data parallelism (``accelerate launch``) each rank appends to its own ``samples.rank<r>.jsonl``
(:func:`log_path`), so no two processes write one file; the job merges them into ``samples.jsonl``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def log_path(job_dir: Path, rank: int = 0, world_size: int = 1) -> Path:
    return job_dir / ("samples.jsonl" if world_size == 1 else f"samples.rank{rank}.jsonl")


def read_all(job_dir: Path, world_size: int) -> list[dict]:
    """Every rank's entries, first occurrence per (task, doc_id): lmms-eval pads ranks with duplicate requests."""
    logs = [SamplesLog(log_path(job_dir, rank, world_size)) for rank in range(world_size)]
    merged = {}
    for log in logs:
        for entry in log.read():
            merged.setdefault((entry["task"], entry["doc_id"]), entry)
    return sorted(merged.values(), key=lambda entry: (entry["task"], entry["doc_id"]))


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
