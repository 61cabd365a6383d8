"""Parents in the Ray object store: loaded from disk once per cluster, read zero-copy by builders.

A `ParentStore` actor reads the parents' tensors and puts them into the object store as read-only
numpy arrays, one object per parent and layer block (`layer.7`, or `head` for the tensors outside
the decoder layers), in their stored dtype (bf16 as int16 bits, FP8 as bytes with their scales).
Large parent sets are split by layer range over several stores (`n_shards`), spread over nodes.
While loading, a store computes each parent's distance to the base per tensor (an Arrow table).

Stores are detached, named per sweep (`alloy-store-<sweep>-<i>` in namespace `alloy`), and restarted by
Ray when they die; `load()` is idempotent, so a restarted store reloads from disk on the next call.
A store remembers the fingerprint of the parent folders it was started on (file names, sizes and
modification times); `start_stores` finding a running store of another fingerprint (a parent rewritten,
replaced or deleted) stops it instead of serving the stale copy. `stop_stores` removes a sweep's stores
(the sweep does it when it ends, unless `--keep-store`).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import ray
import torch

from alloy.io.checkpoint import Checkpoint, to_compute
from alloy.errors import AlloyError
from alloy.io.fp8 import block_size
from alloy.merge.groups import layer_index, preset_for
from alloy.merge.plan import resolve_model_path

NAMESPACE = "alloy"
HEAD_BLOCK = "head"
_NUMPY_VIEW = {torch.bfloat16: torch.int16, torch.float8_e4m3fn: torch.uint8, torch.float8_e5m2: torch.uint8}


def block_of(name: str) -> str:
    """The store block a tensor name belongs to: `layer.N`, or `head` outside the decoder layers."""
    layer = layer_index(name)
    return HEAD_BLOCK if layer is None else f"layer.{layer}"


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array of the same bytes (bf16 and FP8 as integer views)."""
    view = _NUMPY_VIEW.get(t.dtype)
    return (t.view(view) if view else t).contiguous().numpy()


def from_numpy(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """The tensor behind `to_numpy`'s array, sharing its (possibly read-only) memory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only arrays: we never write to them
        t = torch.from_numpy(a)
    return t.view(dtype) if t.dtype != dtype else t


@dataclass
class StoreManifest:
    """What a store holds: each parent's metadata and the refs of its blocks."""

    checkpoints: dict[str, Checkpoint]                 # recipe model name -> metadata (no tensor data)
    blocks: dict[str, dict[str, ray.ObjectRef]]       # model -> block -> ref of {tensor name: array}
    base: str | None = None                            # the base the distances are measured from
    distances: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # model -> tensor -> {"relative", "rms"}: each non-base parent's distance to the base


class ParentStore:
    """Holds a layer range of every parent in the object store (use via `start_stores`)."""

    def __init__(self, parents: Mapping[str, str], base: str | None, shard: int, n_shards: int,
                 fingerprint: str = ""):
        self.parents = dict(parents)
        self.fingerprint = fingerprint
        self.base = base
        self.shard, self.n_shards = shard, n_shards
        self._manifest: StoreManifest | None = None
        self._stats: list[dict] = []
        self.load_count = 0

    def load(self) -> StoreManifest:
        """Load this store's share of the parents (once; later calls return the same manifest)."""
        if self._manifest is not None:
            return self._manifest
        checkpoints = {name: Checkpoint.open(path) for name, path in self.parents.items()}
        every = dict.fromkeys(n for ck in checkpoints.values() for n in ck.names)
        mine = [n for n in every if self._owns(n, checkpoints)]
        need = sum(ck.tensors[n].nbytes for ck in checkpoints.values() for n in mine if n in ck.tensors)
        _check_capacity(need, self.shard)
        base = checkpoints.get(self.base) if self.base else None
        preset = preset_for(next(iter(checkpoints.values())).config)
        blocks: dict[str, dict[str, ray.ObjectRef]] = {}
        for model, ck in checkpoints.items():
            by_block: dict[str, list[str]] = {}
            for n in mine:
                if n in ck.tensors:
                    by_block.setdefault(block_of(n), []).append(n)
            # one block in process memory at a time: read it, put it, let it go
            blocks[model] = {b: ray.put({n: to_numpy(ck.read(n)) for n in names}) for b, names in by_block.items()}
            if base is not None and ck is not base:
                self._stats.extend(_distances(model, ck, base, mine, preset))
            ck.close()
        distances: dict[str, dict[str, dict[str, float]]] = {}
        for row in self._stats:
            distances.setdefault(row["model"], {})[row["tensor"]] = {"relative": row["relative"], "rms": row["rms"]}
        self._manifest = StoreManifest(checkpoints, blocks, self.base, distances)
        self.load_count += 1
        return self._manifest

    def stats(self):
        """Per tensor and non-base parent: base norm and Frobenius / relative / rms distance (pyarrow Table)."""
        import pyarrow as pa

        self.load()
        return pa.Table.from_pylist(self._stats, schema=pa.schema([
            ("model", pa.string()), ("tensor", pa.string()), ("group", pa.string()), ("base_norm", pa.float64()),
            ("frobenius", pa.float64()), ("relative", pa.float64()), ("rms", pa.float64())]))

    def info(self) -> dict:
        """How many times this store has loaded (a restarted store loads again), its shard and the
        fingerprint of the parents it was started on."""
        return {"load_count": self.load_count, "shard": self.shard, "n_shards": self.n_shards,
                "fingerprint": self.fingerprint}

    def _owns(self, name: str, checkpoints: Mapping[str, Checkpoint]) -> bool:
        layer = layer_index(name)
        if layer is None:
            return self.shard == 0
        n_layers = max(1, max(ck.num_layers for ck in checkpoints.values()))
        per = -(-n_layers // self.n_shards)
        return min(layer // per, self.n_shards - 1) == self.shard


def _check_capacity(need: int, shard: int) -> None:
    node = ray.get_runtime_context().get_node_id()
    capacity = next((n["Resources"].get("object_store_memory", 0) for n in ray.nodes() if n["NodeID"] == node), 0)
    if capacity and need > 0.9 * capacity:
        raise AlloyError(
            f"parent store {shard} needs {need / 1e9:.2f} GB of object store memory but its node has "
            f"{capacity / 1e9:.2f} GB: start Ray with a larger --object-store-memory (e.g. `ray start --head "
            f"--object-store-memory {int(need * 1.25)}`), or split the parents over more store actors "
            f"(store_shards) on more nodes")


def _distances(model: str, ck: Checkpoint, base: Checkpoint, names: list[str], preset) -> list[dict]:
    from alloy.merge.stats import checkpoint_distances

    return [{"model": model, "tensor": d.name, "group": preset.group_of(d.name), "base_norm": d.base_norm,
             "frobenius": d.frobenius, "relative": d.relative, "rms": d.rms}
            for d in checkpoint_distances(base, ck, names)]


class BlockSource:
    """A parent's tensors for one build, read from its store blocks (fetched on first use)."""

    def __init__(self, checkpoint: Checkpoint, blocks: Mapping[str, ray.ObjectRef]):
        self.checkpoint = checkpoint
        self.blocks = blocks
        self._cache: dict[str, dict[str, np.ndarray]] = {}

    def prefetch(self, block: str) -> None:
        """Fetch one block (zero-copy) and drop the previous ones, bounding memory to one block."""
        if block not in self._cache:
            self._cache = {block: ray.get(self.blocks[block])}

    def read(self, name: str) -> torch.Tensor:
        block = block_of(name)
        self.prefetch(block)
        return from_numpy(self._cache[block][name], self.checkpoint.tensors[name].dtype)

    def read_for_compute(self, name: str, dtype: torch.dtype, device: str | torch.device = "cpu") -> torch.Tensor:
        scale = self.checkpoint.scale_name(name)
        return to_compute(self.read(name), self.read(scale) if scale else None, dtype, device,
                          block_size(self.checkpoint.config))


def store_name(sweep: str, shard: int) -> str:
    """The Ray actor name of a sweep's store shard."""
    return f"alloy-store-{sweep}-{shard}"


def start_stores(sweep: str, parents: Mapping[str, str | Path], base: str | None = None, n_shards: int = 1,
                 base_dir: str | Path = ".", detached: bool = True,
                 resources: dict[str, float] | None = None) -> list[ray.actor.ActorHandle]:
    """Start (or find, when already running) a sweep's store actors and load them.

    `parents` maps recipe model names to their folders (relative ones resolve against `base_dir`).
    Stores are spread over nodes, restart when they die, and survive the driver when `detached`;
    `resources` pins them to nodes that offer those custom resources.
    """
    try:
        resolved = {name: str(resolve_model_path(str(path), Path(base_dir))) for name, path in parents.items()}
        for name, path in resolved.items():
            Checkpoint.open(path)  # fail here, before any actor starts, on a missing or broken parent
    except AlloyError:
        stop_stores(sweep)  # a running store of this sweep would serve a copy of what is gone
        raise
    fingerprint = parents_fingerprint(resolved)
    actor_cls = ray.remote(ParentStore)
    handles = []
    for i in range(n_shards):
        _stop_if_stale(store_name(sweep, i), fingerprint)
        opts: dict[str, Any] = dict(name=store_name(sweep, i), namespace=NAMESPACE, get_if_exists=True,
                                    max_restarts=-1, max_task_retries=-1, num_cpus=0,
                                    scheduling_strategy="SPREAD", resources=resources or {})
        if detached:
            opts["lifetime"] = "detached"
        handles.append(actor_cls.options(**opts).remote(resolved, base, i, n_shards, fingerprint))
    ray.get([h.load.remote() for h in handles])
    return handles


def parents_fingerprint(parents: Mapping[str, str]) -> str:
    """A digest of the parents' folders: every file's name, size and modification time."""
    import hashlib

    entries = []
    for name, path in sorted(parents.items()):
        for f in sorted(Path(path).iterdir()):
            if f.is_file():
                st = f.stat()
                entries.append((name, f.name, st.st_size, st.st_mtime_ns))
    return hashlib.sha256(repr(entries).encode()).hexdigest()[:16]


def _stop_if_stale(name: str, fingerprint: str) -> None:
    try:
        handle = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return
    try:
        current = ray.get(handle.info.remote()).get("fingerprint")
    except ray.exceptions.RayActorError:
        current = None
    if current != fingerprint:
        _kill(handle, name)


def _kill(handle: ray.actor.ActorHandle, name: str) -> None:
    """Kill a named store and wait until its name is free again."""
    ray.kill(handle, no_restart=True)
    for _ in range(100):
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return
        time.sleep(0.1)


def stop_stores(sweep: str) -> list[str]:
    """Stop every store actor of a sweep (none running is fine); return the names stopped."""
    stopped = []
    while True:
        name = store_name(sweep, len(stopped))
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return stopped
        _kill(handle, name)
        stopped.append(name)


def connect_stores(sweep: str) -> list[ray.actor.ActorHandle]:
    """The running store actors of a sweep, in shard order."""
    handles = []
    while True:
        try:
            handles.append(ray.get_actor(store_name(sweep, len(handles)), namespace=NAMESPACE))
        except ValueError:
            break
    if not handles:
        raise AlloyError(f"no parent store is running for sweep {sweep!r}; start it with start_stores()")
    return handles


def merged_manifest(handles: list[ray.actor.ActorHandle], retries: int = 30) -> StoreManifest:
    """One manifest over all shards (waits for restarting stores)."""
    for attempt in range(retries):
        try:
            parts = ray.get([h.load.remote() for h in handles])
            break
        except ray.exceptions.RayActorError:
            if attempt == retries - 1:
                raise
            time.sleep(1.0)
    blocks: dict[str, dict[str, ray.ObjectRef]] = {}
    distances: dict[str, dict[str, dict[str, float]]] = {}
    for part in parts:
        for model, b in part.blocks.items():
            blocks.setdefault(model, {}).update(b)
        for model, d in part.distances.items():
            distances.setdefault(model, {}).update(d)
    return StoreManifest(parts[0].checkpoints, blocks, parts[0].base, distances)
