"""Reading Hugging Face model folders lazily, one tensor at a time.

A checkpoint is a folder with `config.json` and weights as a single `model.safetensors`, sharded
safetensors with `model.safetensors.index.json`, or legacy `pytorch_model*.bin` files (read only
through `torch.load(weights_only=True, mmap=True)`). Names, shapes and dtypes come from the headers;
tensor data is read when asked for.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alloy.errors import AlloyError
from alloy.io.fp8 import FP8_DTYPE, SCALE_SUFFIX, block_size, dequantize, is_fp8_config

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, read from the file headers."""

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


class Checkpoint:
    """A Hugging Face model folder, opened lazily. Use `Checkpoint.open(path)`."""

    def __init__(self, path: Path, config: dict, tensors: dict[str, TensorInfo]):
        self.path = path
        self.config = config
        self.tensors = tensors
        self.vocabulary = _vocabulary_fingerprint(path, config)
        self._handles: dict[Path, Any] = {}

    def __getstate__(self) -> dict:
        # metadata only: a checkpoint sent to another process reopens its files on first read
        return {**self.__dict__, "_handles": {}}

    @classmethod
    def open(cls, path: str | Path) -> "Checkpoint":
        """Read `config.json` and every weight file's header; raise AlloyError naming what is wrong."""
        path = Path(path)
        if not path.is_dir():
            raise AlloyError(f"model folder {path} does not exist (give the path of a Hugging Face model folder)")
        config_file = path / "config.json"
        if not config_file.is_file():
            raise AlloyError(f"{path}: no config.json; a model folder needs its config.json next to its weights")
        try:
            config = json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AlloyError(f"{config_file}: not valid JSON ({exc})") from None
        return cls(path, config, _read_tensor_infos(path))

    # ----------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Every tensor name, in file order."""
        return list(self.tensors)

    @property
    def num_layers(self) -> int:
        """The number of decoder layers (`num_hidden_layers` of the config)."""
        return int(self.config.get("num_hidden_layers") or self.config.get("n_layer") or 0)

    @property
    def is_fp8(self) -> bool:
        """True when the weights are DeepSeek-style block FP8 with `weight_scale_inv` tensors."""
        return is_fp8_config(self.config) or any(n.endswith(SCALE_SUFFIX) for n in self.tensors)

    def scale_name(self, name: str) -> str | None:
        """The name of a weight's FP8 scale tensor, if the weight is block FP8."""
        info = self.tensors[name]
        scale = name + SCALE_SUFFIX
        return scale if info.dtype == FP8_DTYPE and scale in self.tensors else None

    def read(self, name: str) -> torch.Tensor:
        """One tensor as stored (CPU, its own dtype). Never modify the result: it may be memory-mapped."""
        info = self.tensors.get(name)
        if info is None:
            raise AlloyError(f"{self.path}: no tensor named {name!r}")
        if info.file.suffix == ".safetensors":
            from safetensors import safe_open

            handle = self._handles.get(info.file)
            if handle is None:
                handle = self._handles[info.file] = safe_open(str(info.file), framework="pt")
            return handle.get_tensor(name)
        handle = self._handles.get(info.file)
        if handle is None:
            handle = self._handles[info.file] = _load_bin(info.file)
        return handle[name]

    def read_for_compute(self, name: str, dtype: torch.dtype, device: str | torch.device = "cpu") -> torch.Tensor:
        """One tensor in the compute dtype on `device`, FP8 weights dequantized with their scales."""
        scale = self.scale_name(name)
        return to_compute(self.read(name), self.read(scale) if scale else None, dtype, device,
                          block_size(self.config))

    def tokenizer_files(self) -> list[Path]:
        """The tokenizer files present in the folder."""
        return [self.path / f for f in TOKENIZER_FILES if (self.path / f).is_file()]

    def close(self) -> None:
        """Drop open file handles (memory maps)."""
        self._handles.clear()


def to_compute(raw: torch.Tensor, scale_inv: torch.Tensor | None, dtype: torch.dtype,
               device: str | torch.device, block: tuple[int, int]) -> torch.Tensor:
    """A stored tensor in the compute dtype on `device` (dequantized when it has an FP8 scale).

    When no conversion is needed the result shares memory with `raw`, which may be read-only shared
    memory: merge methods never modify their inputs.
    """
    if scale_inv is not None:
        return dequantize(raw.to(device), scale_inv.to(device), dtype, block)
    return raw.to(device=device, dtype=dtype)


def _vocabulary_fingerprint(path: Path, config: dict) -> tuple[str, Any]:
    """What identifies the vocabulary: a hash of tokenizer.json's vocab and added tokens, else vocab_size."""
    tok = path / "tokenizer.json"
    if tok.is_file():
        try:
            data = json.loads(tok.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AlloyError(f"{tok}: not valid JSON ({exc})") from None
        vocab = (data.get("model") or {}).get("vocab")
        added = sorted((t["id"], t["content"]) for t in data.get("added_tokens") or [])
        return "tokenizer.json", hashlib.sha256(json.dumps([vocab, added], sort_keys=True).encode()).hexdigest()
    return "config vocab_size", config.get("vocab_size")


def _read_tensor_infos(path: Path) -> dict[str, TensorInfo]:
    st_index = path / "model.safetensors.index.json"
    bin_index = path / "pytorch_model.bin.index.json"
    if st_index.is_file() or (path / "model.safetensors").is_file():
        files = _files_from_index(st_index) if st_index.is_file() else [path / "model.safetensors"]
        infos: dict[str, TensorInfo] = {}
        for f in files:
            if not f.is_file():
                raise AlloyError(f"{path}: shard {f.name} named in the index is missing; re-download the model")
            infos.update(_safetensors_header(f))
        if st_index.is_file():
            _check_index_matches(st_index, infos)
        return infos
    if bin_index.is_file() or (path / "pytorch_model.bin").is_file():
        files = _files_from_index(bin_index) if bin_index.is_file() else [path / "pytorch_model.bin"]
        infos = {}
        for f in files:
            if not f.is_file():
                raise AlloyError(f"{path}: shard {f.name} named in the index is missing; re-download the model")
            for name, t in _load_bin(f).items():
                infos[name] = TensorInfo(name, f, t.dtype, tuple(t.shape))
        return infos
    raise AlloyError(f"{path}: no weights found (expected model.safetensors, model.safetensors.index.json or "
                     f"pytorch_model.bin)")


def _files_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise AlloyError(f"{index}: not a valid index (needs a 'weight_map'): {exc}") from None
    return [index.parent / f for f in dict.fromkeys(weight_map.values())]


def _check_index_matches(index: Path, infos: dict[str, TensorInfo]) -> None:
    weight_map = json.loads(index.read_text())["weight_map"]
    for name, file in weight_map.items():
        if name not in infos or infos[name].file.name != file:
            raise AlloyError(f"{index}: tensor {name!r} is mapped to {file}, which does not contain it")


def _safetensors_header(file: Path) -> dict[str, TensorInfo]:
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if 8 + n > size:
                raise AlloyError(f"{file}: truncated safetensors file: its header needs {8 + n} bytes, the file "
                                 f"has {size}; re-download or re-write it")
            header = json.loads(fh.read(n))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AlloyError(f"{file}: not a readable safetensors file ({exc})") from None
    infos = {}
    data_end = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(meta.get("dtype"))
        if dtype is None:
            raise AlloyError(f"{file}: tensor {name!r} has unsupported dtype {meta.get('dtype')!r}")
        infos[name] = TensorInfo(name, file, dtype, tuple(meta["shape"]))
        begin, end = meta.get("data_offsets", (0, 0))
        if end - begin != infos[name].nbytes:
            raise AlloyError(f"{file}: tensor {name!r} spans {end - begin} bytes, its dtype and shape need "
                             f"{infos[name].nbytes}; the file is damaged, re-download or re-write it")
        data_end = max(data_end, end)
    if 8 + n + data_end > size:
        raise AlloyError(f"{file}: truncated safetensors file: its tensors need {8 + n + data_end} bytes, the "
                         f"file has {size}; re-download or re-write it")
    return infos


def _load_bin(file: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for a bad or unsafe pickle
        raise AlloyError(f"{file}: cannot be read with torch.load(weights_only=True): {exc}") from None
