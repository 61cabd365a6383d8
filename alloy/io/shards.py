"""Writing safetensors shards by streaming: tensors go to disk as they are produced.

The names, dtypes and shapes of every output tensor are known before the merge starts (they come
from the plan), so the shard layout and each shard's header are fixed up front and each tensor's
bytes are appended as soon as it is merged: no shard is ever held in memory.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

import torch

from alloy.errors import AlloyError

_DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64",
                torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def parse_size(size: str | int) -> int:
    """'5GB' / '500MB' / '2GiB' / 1000 → bytes (at least 1)."""
    if isinstance(size, int):
        value = size
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
        if not m or m.group(2).upper() not in _UNITS:
            raise AlloyError(f"cannot read size {size!r}; write it like 5GB, 500MB or 2GiB")
        value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value < 1:
        raise AlloyError(f"size {size!r} is not a positive number of bytes; write it like 5GB, 500MB or 2GiB")
    return value


@dataclass(frozen=True)
class OutputTensor:
    """One tensor the writer expects: its name, dtype and shape."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


class ShardWriter:
    """Writes the declared tensors, in declared order, into shards of at most `max_shard_size` bytes.

    One shard is `model.safetensors`; several are `model-0000i-of-0000N.safetensors` plus
    `model.safetensors.index.json`, as transformers writes them.
    """

    def __init__(self, folder: Path, tensors: Sequence[OutputTensor], max_shard_size: int):
        self.folder = Path(folder)
        self.shards: list[list[OutputTensor]] = [[]]
        size = 0
        for t in tensors:
            if self.shards[-1] and size + t.nbytes > max_shard_size:
                self.shards.append([])
                size = 0
            self.shards[-1].append(t)
            size += t.nbytes
        n = len(self.shards)
        self.files = (["model.safetensors"] if n == 1 else
                      [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
        self._order = [(i, t) for i, shard in enumerate(self.shards) for t in shard]
        self._next = 0
        self._fh: BinaryIO | None = None
        self._shard = -1

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next declared tensor (its name, dtype and shape must match the declaration)."""
        shard, want = self._order[self._next]
        if name != want.name or tensor.dtype != want.dtype or tuple(tensor.shape) != want.shape:
            raise RuntimeError(f"writer expected {want.name} {want.dtype} {want.shape}, got {name} "
                               f"{tensor.dtype} {tuple(tensor.shape)}")
        if shard != self._shard:
            self._open(shard)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self._fh.write(memoryview(data))
        self._next += 1
        if self._next == len(self._order) or self._order[self._next][0] != shard:
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        """Check every declared tensor was written and write the index (when sharded)."""
        if self._fh is not None:
            self._fh.close()
        if self._next != len(self._order):
            raise RuntimeError(f"writer closed after {self._next} of {len(self._order)} tensors")
        if len(self.files) > 1:
            index = {"metadata": {"total_size": sum(t.nbytes for _, t in self._order)},
                     "weight_map": {t.name: self.files[i] for i, t in self._order}}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    def _open(self, shard: int) -> None:
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for t in self.shards[shard]:
            header[t.name] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                              "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._fh = open(self.folder / self.files[shard], "wb")
        self._fh.write(struct.pack("<Q", len(raw)))
        self._fh.write(raw)
        self._shard = shard
