"""Resumable batch jobs: output written chunk by chunk into `OUT.parts/`, reused by a rerun, joined into OUT.

A job's output is a sequence of chunks, chunk k holding the output lines of input products k*C .. (k+1)*C - 1.
Each chunk is written to `OUT.parts/chunk-<k>.jsonl` through temp file + rename, so a chunk file is either
whole or absent, whatever kills the process. `manifest.json` in the folder records what the chunks were
computed from (input file size, mtime and SHA-256, model fingerprint, batch and chunk size, reading options);
a rerun with the same manifest keeps the chunks already there and computes only the others. When every chunk
is present they are concatenated in order into OUT (again temp + rename) and the folder is removed, so OUT
appears only complete, as before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shangpin._util import atomic_write
from shangpin.errors import ConfigError

log = logging.getLogger(__name__)

PARTS_SUFFIX = ".parts"
MANIFEST_FILE = "manifest.json"
PENDING_FILE = "db-pending.json"
FORMAT_VERSION = 1
KILL_AFTER_ENV = "SHANGPIN_TEST_KILL_AFTER_CHUNKS"
"""Test hook: the process kills itself (SIGKILL) after writing this many chunks, to test resuming."""


def parts_dir(out: Path) -> Path:
    """The sidecar folder of the chunks of `out`."""
    return out.with_name(out.name + PARTS_SUFFIX)


class ChunkedJob:
    """The chunk folder of one output file, opened for a run.

    Args:
        out: the final output file.
        settings: what the chunks depend on (JSON-able); chunks written under other settings are discarded.
        restart: discard chunks of an earlier run even when the settings match.

    Attributes:
        done: indices of the chunks already written (by an earlier run, when resuming).
        db_pending: the chunk an earlier run was storing in the database when it stopped (None if none):
            its rows may or may not be there, so they are deleted before the chunk is stored again.
        started_at: epoch seconds when the job (its first run) started.
    """

    def __init__(self, out: Path, settings: Mapping[str, Any], *, restart: bool = False) -> None:
        self.out = out
        self.parts = parts_dir(out)
        self.settings = json.loads(json.dumps(dict(settings)))  # as it reads back from the manifest
        self.done: set[int] = set()
        self.db_pending: int | None = None
        self.started_at = 0.0
        self._written = 0
        self._open(restart)

    def _open(self, restart: bool) -> None:
        manifest = self._read_manifest()
        if manifest is not None and not restart and manifest.get("settings") == self.settings:
            self.started_at = float(manifest["started_at"])
            for path in self.parts.iterdir():
                if path.name.startswith(".") and path.name.endswith(".tmp"):
                    path.unlink()  # a chunk being written when the process died
                elif path.name.startswith("chunk-") and path.suffix == ".jsonl":
                    self.done.add(int(path.stem.removeprefix("chunk-")))
            pending = self.parts / PENDING_FILE
            if pending.is_file():
                chunk = int(json.loads(pending.read_text(encoding="utf-8"))["chunk"])
                self.db_pending = None if chunk in self.done else chunk
            if self.done:
                log.info("%s: resuming, %d chunks already written", self.parts, len(self.done))
            return
        if manifest is not None:
            why = "--restart" if restart else "the input, model or options changed"
            log.warning("%s: discarding the chunks of an earlier run (%s)", self.parts, why)
            shutil.rmtree(self.parts)
        self.started_at = time.time()
        self.parts.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.parts / MANIFEST_FILE) as fh:
            json.dump(
                {"format": FORMAT_VERSION, "started_at": self.started_at, "settings": self.settings},
                fh,
                indent=2,
            )

    def _read_manifest(self) -> dict[str, Any] | None:
        if not self.parts.exists():
            return None
        path = self.parts / MANIFEST_FILE
        if not path.is_file():
            if any(self.parts.iterdir()):
                raise ConfigError(
                    f"{self.parts} exists but holds no {MANIFEST_FILE}, so it is not the chunk folder of a "
                    "shangpin run; move it away or choose another --out"
                )
            return None  # created by a run that died before writing its manifest
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            manifest = {}  # cannot happen through atomic writes; start over rather than fail
        if manifest.get("format") != FORMAT_VERSION:
            return {"settings": None}
        return dict(manifest)

    def chunk_path(self, index: int) -> Path:
        return self.parts / f"chunk-{index:06d}.jsonl"

    def mark_db_pending(self, index: int) -> None:
        """Record that chunk `index` is about to be stored in the database (see `db_pending`)."""
        with atomic_write(self.parts / PENDING_FILE) as fh:
            json.dump({"chunk": index}, fh)

    def write_chunk(self, index: int, lines: str) -> None:
        """Write the output lines of chunk `index` (whole or not at all)."""
        with atomic_write(self.chunk_path(index)) as fh:
            fh.write(lines)
        self.done.add(index)
        self._written += 1
        kill_after = os.environ.get(KILL_AFTER_ENV)
        if kill_after and self._written >= int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)

    def finish(self, n_chunks: int) -> int:
        """Concatenate chunks 0 .. n_chunks - 1 into the output file and remove the folder; returns the lines."""
        missing = [k for k in range(n_chunks) if k not in self.done]
        if missing:
            raise RuntimeError(f"chunks {missing[:5]} of {self.out} were never written")
        lines = 0
        with atomic_write(self.out, "wb") as out:
            for index in range(n_chunks):
                with open(self.chunk_path(index), "rb") as fh:
                    data = fh.read()
                lines += data.count(b"\n")
                out.write(data)  # type: ignore[arg-type]  # opened in binary mode
        self.discard()
        return lines

    def discard(self) -> None:
        """Remove the chunk folder."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.parts)
