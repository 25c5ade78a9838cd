"""Compact on-disk columns for the index: strings as one UTF-8 blob plus offsets, and .npy matrices written row
block by row block (the row count is not known until the catalog has been read)."""

from __future__ import annotations

import ast
import struct
from pathlib import Path
from typing import IO

import numpy as np

_NPY_HEADER_BYTES = 128  # room for any 2-d shape; numpy aligns headers to 64 bytes and allows space padding


class StringWriter:
    """Append strings to `<name>.bin`; `close` writes the offsets as `<name>.idx.npy` (uint64, n + 1 entries)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = folder, name
        self._fh: IO[bytes] = open(folder / f"{name}.bin", "wb")
        self._offsets: list[int] = [0]

    def add(self, text: str) -> None:
        data = text.encode("utf-8")
        self._fh.write(data)
        self._offsets.append(self._offsets[-1] + len(data))

    def close(self) -> None:
        self._fh.close()
        np.save(self.folder / f"{self.name}.idx.npy", np.asarray(self._offsets, dtype=np.uint64))


class StringColumn:
    """Read-only strings by row, memory-mapped (nothing is decoded until asked for)."""

    def __init__(self, folder: Path, name: str) -> None:
        self._offsets = np.load(folder / f"{name}.idx.npy", mmap_mode="r", allow_pickle=False)
        size = int(self._offsets[-1])
        self._blob: np.ndarray | bytes = (
            np.memmap(folder / f"{name}.bin", dtype=np.uint8, mode="r") if size else b""
        )

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, row: int) -> str:
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        return bytes(self._blob[start:end]).decode("utf-8")


class NpyWriter:
    """Write a 2-d .npy file row block by row block; the header is completed on `close`."""

    def __init__(self, path: Path, dim: int, dtype: str) -> None:
        self.path, self.dim, self.dtype = path, dim, np.dtype(dtype)
        self.rows = 0
        self._fh: IO[bytes] = open(path, "wb")
        self._fh.write(b"\0" * _NPY_HEADER_BYTES)

    def add(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype).reshape(-1, self.dim)
        self._fh.write(block.tobytes())
        self.rows += block.shape[0]

    def close(self) -> None:
        header = repr({"descr": self.dtype.str, "fortran_order": False, "shape": (self.rows, self.dim)})
        prefix = b"\x93NUMPY\x01\x00"
        room = _NPY_HEADER_BYTES - len(prefix) - 2
        text = header.encode("latin1").ljust(room - 1) + b"\n"
        assert len(text) == room and ast.literal_eval(header)  # fits: shapes are short
        self._fh.seek(0)
        self._fh.write(prefix + struct.pack("<H", room) + text)
        self._fh.close()
