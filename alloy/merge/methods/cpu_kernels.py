"""Compiled CPU kernels (numba) for the passes that torch's eager CPU ops make slowly: the digit
histograms, the search for the j-th equal key and the masks of the radix selections (select.py), the
product of a task vector with its mask (sparsify.py), TIES's sign election, the whole merge of task
vectors pruned by magnitude or not at all in one pass over the models (task_arithmetic.py), and the
first two steps of a bfloat16 weighted average written into a resident tensor (common.weighted_sum).

Each kernel works on one span [start, stop) of flat, contiguous numpy views, releases the GIL, and
is run over a tensor's spans on torch's thread count (`run_spans`); the one-pass average runs on the
calling thread, since common.weighted_sum takes it on one torch thread only. Every kernel makes the
same float operations, in the same order and precision, as the torch code it stands for, so the
results are the same bits (signed zeros included; a NaN may come out with another sign). The torch
code stays the path for other devices, dtypes and small tensors (`compiled.uses_cpu_kernels`
decides), and the tests compare the two.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch


def _answer_vars_for_llvmlite() -> None:
    """Let vLLM start CPU engines in a process that has loaded numba.

    vLLM 0.32's CPU platform, while starting an engine, reads `vars()` of every object in every loaded
    module. llvmlite's library handle (loaded with numba) answers any attribute it lacks, `__dict__`
    included, with a wrapped C function, and the engine start fails on it. Giving the handle an empty
    `__dict__` entry in its table of looked-up names makes `vars()` return that instead.
    """
    from llvmlite.binding import ffi

    table = getattr(ffi.lib, "_fntab", None)
    if isinstance(table, dict):
        table.setdefault("__dict__", {})


_answer_vars_for_llvmlite()

DIGITS = 1 << 16
# Below this many elements a kernel runs on the calling thread only.
MIN_SPAN = 1 << 17
# The most elements of one span (so that the histograms' int32 tables cannot overflow).
MAX_SPAN = 1 << 32


def flat_numpy(t: torch.Tensor) -> np.ndarray:
    """The 1-D numpy view of a contiguous CPU tensor (no copy; a parameter's data, outside autograd)."""
    return t.detach().reshape(-1).numpy()


def flat_bf16_bits(t: torch.Tensor) -> np.ndarray:
    """The 1-D numpy view of the bits of a contiguous bfloat16 CPU tensor, as uint16."""
    return flat_numpy(t.view(torch.int16)).view(np.uint16)


@functools.lru_cache(maxsize=4)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="alloy-kernel")


def spans(n: int) -> list[tuple[int, int]]:
    """[start, stop) spans covering range(n): one per torch thread, of at least MIN_SPAN and at most
    MAX_SPAN elements."""
    parts = max(1, min(torch.get_num_threads(), n // MIN_SPAN), -(-n // MAX_SPAN))
    step = -(-n // parts) if n else 0
    return [(start, min(n, start + step)) for start in range(0, n, step)] if n else [(0, 0)]


def run_spans(kernel: Callable[..., None], n: int, per_span: Callable[[int, int, int], tuple]) -> int:
    """Call `kernel(*per_span(index, start, stop))` for each span of range(n), in parallel when there
    are several; return the number of spans."""
    parts = spans(n)
    if len(parts) == 1:
        kernel(*per_span(0, *parts[0]))
    else:
        list(_pool(len(parts)).map(lambda item: kernel(*per_span(item[0], *item[1])), enumerate(parts)))
    return len(parts)


# Each kernel indexes slices from 0, so that the compiler knows no index is negative and vectorizes.

# The histograms count into LANES interleaved int32 tables: runs of equal keys, common in task
# vectors of bf16 checkpoints, would otherwise make every increment wait for the one before. Keys
# outside the bucket being resolved count in a spare last bin, so the loops have no branch.
LANES = 4


@numba.njit(nogil=True, cache=True)
def _add_lanes(tables, counts):
    for digit in range(counts.size):
        total = np.int64(0)
        for lane in range(tables.shape[0]):
            total += tables[lane, digit]
        counts[digit] += total


@numba.njit(nogil=True, cache=True)
def top_digit_counts(keys, start, stop, shift, offset, counts):
    """counts[(key >> shift) + offset] += 1 for each key of the span."""
    span = keys[start:stop]
    tables = np.zeros((LANES, counts.size), dtype=np.int32)
    whole = span.size // LANES * LANES
    for j in range(0, whole, LANES):
        for lane in range(LANES):
            tables[lane, (np.int64(span[j + lane]) >> shift) + offset] += 1
    for j in range(whole, span.size):
        tables[0, (np.int64(span[j]) >> shift) + offset] += 1
    _add_lanes(tables, counts)


@numba.njit(nogil=True, cache=True)
def digit_counts(keys, start, stop, high_shift, high, shift, counts):
    """counts[16-bit digit at `shift`] += 1 for each key of the span whose bits from `high_shift` up
    equal `high`."""
    span = keys[start:stop]
    spare = counts.size
    tables = np.zeros((LANES, spare + 1), dtype=np.int32)
    whole = span.size // LANES * LANES
    for j in range(0, whole, LANES):
        for lane in range(LANES):
            key = np.int64(span[j + lane])
            tables[lane, ((key >> shift) & 0xFFFF) if (key >> high_shift) == high else spare] += 1
    for j in range(whole, span.size):
        key = np.int64(span[j])
        tables[0, ((key >> shift) & 0xFFFF) if (key >> high_shift) == high else spare] += 1
    _add_lanes(tables[:, :spare], counts)


@numba.njit(nogil=True, cache=True)
def count_equal(keys, start, stop, key, out, index):
    """out[index] = how many keys of the span equal `key`."""
    span = keys[start:stop]
    found = 0
    for j in range(span.size):
        found += span[j] == key
    out[index] = found


# Keys per block when looking for the nth equal key: blocks are counted branch-free, and only the
# block that holds it is scanned.
SCAN_BLOCK = 4096


@numba.njit(nogil=True, cache=True)
def nth_equal(keys, start, stop, key, nth):
    """The index of the nth (0-based) key of the span equal to `key`, or `stop` when there are fewer."""
    for block in range(start, stop, SCAN_BLOCK):
        span = keys[block:min(stop, block + SCAN_BLOCK)]
        found = 0
        for j in range(span.size):
            found += span[j] == key
        if nth < found:
            for j in range(span.size):
                if span[j] == key:
                    if nth == 0:
                        return block + j
                    nth -= 1
        nth -= found
    return stop


@numba.njit(nogil=True, cache=True)
def mask_product(values, mask, zero, one, start, stop, out):
    """out = values · mask (1 or 0) over the span: the value where the mask holds, else the value times
    zero (a signed zero, or NaN for an infinity), as torch's product with a boolean mask."""
    span, kept, result = values[start:stop], mask[start:stop], out[start:stop]
    for j in range(span.size):
        result[j] = span[j] * (one if kept[j] else zero)


@numba.njit(nogil=True, cache=True)
def _mask_piece(keys, out, low, low_equal, high, high_equal):
    for j in range(keys.size):
        key = keys[j]
        out[j] = ((key > low) | (low_equal & (key == low))) & ((key < high) | (high_equal & (key == high)))


@numba.njit(nogil=True, cache=True)
def rank_mask(keys, start, stop, low, low_from, low_to, high, high_from, high_to, out):
    """out[j] for the span: the key is above `low` (or equal to it at an index in [low_from, low_to))
    and below `high` (or equal to it at an index in [high_from, high_to)). The span is cut at those
    indices, so that each piece is one branch-free loop."""
    cuts = sorted({start, stop, min(max(low_from, start), stop), min(max(low_to, start), stop),
                   min(max(high_from, start), stop), min(max(high_to, start), stop)})
    for i in range(len(cuts) - 1):
        a, b = cuts[i], cuts[i + 1]
        _mask_piece(keys[a:b], out[a:b], low, low_from <= a and a < low_to, high, high_from <= a and a < high_to)


# Entries per block of the sign consensus and the task-vector merge: their running sums stay in L1 cache.
CONSENSUS_BLOCK = 512


@numba.njit(nogil=True, cache=True)
def _consensus_block(weighted, size, weights, zero, one, normalize, sign, divisor, mixed):
    """TIES's sign election and agreeing sum over one block (the first `size` entries of the rows of
    `weighted`, one per model, into `mixed`), as `task_arithmetic.sign_consensus` computes it with torch:
    the elected sign of Σ_i δ_i (−1 for a negative or NaN sum), the agreement a_i = [δ_i·sign > 0] as 1
    or 0, Σ_i a_i·δ_i from +0, and with `normalize` its division by Σ_i a_i·w_i (1 where that is 0),
    model by model in the order of torch's passes. `sign` and `divisor` are scratch of at least `size` entries. (Whole rows of C arrays
    are indexed, never 2-D slices, so that the loops vectorize.)"""
    first = weighted[0]
    for j in range(size):
        sign[j] = first[j]
    for i in range(1, weighted.shape[0]):
        delta = weighted[i]
        for j in range(size):
            sign[j] = sign[j] + delta[j]
    for j in range(size):
        sign[j] = one if sign[j] >= zero else -one
        agree = one if first[j] * sign[j] > zero else zero
        mixed[j] = first[j] * agree + zero
        divisor[j] = zero + weights[0] * agree
    for i in range(1, weighted.shape[0]):
        delta = weighted[i]
        weight = weights[i]
        for j in range(size):
            agree = one if delta[j] * sign[j] > zero else zero
            mixed[j] = mixed[j] + delta[j] * agree
            divisor[j] = divisor[j] + weight * agree
    if normalize:
        for j in range(size):
            mixed[j] = mixed[j] / (one if divisor[j] == zero else divisor[j])


@numba.njit(nogil=True, cache=True)
def sign_consensus_span(weighted, weights, zero, one, normalize, start, stop, out):
    """`_consensus_block` over the span, a block at a time, of the weighted task vectors `weighted` (a
    tuple of flat arrays) into `out`. Arithmetic in the arrays' dtype (`weights`, `zero` and `one` have it
    too)."""
    rows = np.empty((len(weighted), CONSENSUS_BLOCK), dtype=out.dtype)
    sign = np.empty(CONSENSUS_BLOCK, dtype=out.dtype)
    divisor = np.empty(CONSENSUS_BLOCK, dtype=out.dtype)
    for block in range(start, stop, CONSENSUS_BLOCK):
        size = min(CONSENSUS_BLOCK, stop - block)
        for i in range(len(weighted)):
            rows[i, :size] = weighted[i][block:block + size]
        _consensus_block(rows, size, weights, zero, one, normalize, sign, divisor, out[block:block + size])


# How a task-vector merge treats each model's task vector (column 0 of its rules).
KEEP_RANKS, KEEP_ALL, KEEP_NONE = 0, 1, 2


@numba.njit(nogil=True, cache=True)
def task_vector_merge_span(models, base, weights, rules, key_mask, consensus, normalize, divisor, lam, zero,
                           one, tau, keys, start, stop, out):
    """`task_arithmetic.merge_task_vectors` over the span, for magnitude pruning or none, in one pass
    over the models and the base: out = base + λ·combine(w_i·prune(W_i − base)), with the same float
    operations in the same order as the torch passes.

    Row i of `rules` says what model i's task vector δ_i keeps: KEEP_ALL (δ_i), KEEP_NONE (+0, as
    zeros), or KEEP_RANKS: δ_i·1 where its magnitude key (its bits & `key_mask`) is above rules[i, 1]
    (or equal to it at a flat index in [rules[i, 2], rules[i, 3])) and below rules[i, 4] (or equal at
    an index in [rules[i, 5], rules[i, 6])), δ_i·0 elsewhere. `combine` is `_consensus_block` with
    `consensus`, else Σ_i from the first model, divided by `divisor` with `normalize`. `tau` is scratch
    of (models, CONSENSUS_BLOCK) entries, and `keys` its bits as integers."""
    count = len(models)
    sign = np.empty(CONSENSUS_BLOCK, dtype=out.dtype)
    agreeing = np.empty(CONSENSUS_BLOCK, dtype=out.dtype)
    factor = np.empty(CONSENSUS_BLOCK, dtype=out.dtype)
    for block in range(start, stop, CONSENSUS_BLOCK):
        size = min(CONSENSUS_BLOCK, stop - block)
        b = base[block:block + size]
        for i in range(count):
            w, row, bits = models[i][block:block + size], tau[i], keys[i]
            for j in range(size):
                row[j] = w[j] - b[j]
            kind = rules[i, 0]
            if kind == KEEP_NONE:
                for j in range(size):
                    row[j] = zero
            elif kind == KEEP_RANKS:
                low, low_from, low_to = rules[i, 1], rules[i, 2] - block, rules[i, 3] - block
                high, high_from, high_to = rules[i, 4], rules[i, 5] - block, rules[i, 6] - block
                for j in range(size):  # the 1s and 0s first: a store to `row` would alias `bits`
                    key = np.int64(bits[j] & key_mask)
                    kept = ((key > low) | ((key == low) & (low_from <= j) & (j < low_to))) & \
                        ((key < high) | ((key == high) & (high_from <= j) & (j < high_to)))
                    factor[j] = one if kept else zero
                for j in range(size):
                    row[j] = row[j] * factor[j]
            weight = weights[i]
            for j in range(size):
                row[j] = row[j] * weight
        mixed = out[block:block + size]
        if consensus:
            _consensus_block(tau, size, weights, zero, one, normalize, sign, agreeing, mixed)
        else:
            first = tau[0]
            for j in range(size):
                mixed[j] = first[j]
            for i in range(1, count):
                row = tau[i]
                for j in range(size):
                    mixed[j] = mixed[j] + row[j]
            if normalize:
                for j in range(size):
                    mixed[j] = mixed[j] / divisor
        if lam != one:
            for j in range(size):
                mixed[j] = mixed[j] * lam
        for j in range(size):
            mixed[j] = mixed[j] + b[j]


# Entries per block of `bf16_lerp_pair_span`: its float32 scratch stays in L1 cache.
LERP_BLOCK = 2048


@numba.njit(nogil=True, cache=True)
def _round_to_bf16(bits, out, shift):
    """out[j] = the float32 bits[j] rounded to the nearest even bfloat16 (NaN as 0x7FC0), shifted
    left by `shift` (16: the rounded value as float32 bits; 0: the bfloat16 bits)."""
    for j in range(bits.size):
        u = bits[j]
        nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
        out[j] = (np.uint32(0x7FC0) if nan else (u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16) << shift


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def _lerp(start, end, weight, out):
    """out = torch's float32 lerp: coeff·(end − start) + base in one fused multiply-add, where coeff = w
    and base = start when |w| < 0.5, else coeff = w − 1 and base = end."""
    if abs(weight) < np.float32(0.5):
        for j in range(out.size):
            out[j] = weight * (end[j] - start[j]) + start[j]
    else:
        coeff = weight - np.float32(1)
        for j in range(out.size):
            out[j] = coeff * (end[j] - start[j]) + end[j]


@numba.njit(nogil=True, cache=True)
def bf16_lerp_pair_span(a, b, c, w1, w2, start, stop, out):
    """out = lerp(lerp(a, b, w1), c, w2) over the span, each lerp rounded to bfloat16: the bits of
    torch's `lerp(a, b, w1, out=out)` and then `out.lerp_(c, w2)`, in one pass. a, b, c and out hold
    bfloat16 bits (uint16); w1 and w2 are float32."""
    wide = np.empty((3, LERP_BLOCK), dtype=np.uint32)
    mixed = np.empty(LERP_BLOCK, dtype=np.float32)
    values, mixed_bits = wide.view(np.float32), mixed.view(np.uint32)
    for block in range(start, stop, LERP_BLOCK):
        size = min(LERP_BLOCK, stop - block)
        sa, sb, sc = a[block:block + size], b[block:block + size], c[block:block + size]
        for j in range(size):
            wide[0, j] = np.uint32(sa[j]) << 16
            wide[1, j] = np.uint32(sb[j]) << 16
            wide[2, j] = np.uint32(sc[j]) << 16
        _lerp(values[0, :size], values[1, :size], w1, mixed[:size])
        _round_to_bf16(mixed_bits[:size], wide[0, :size], np.uint32(16))
        _lerp(values[0, :size], values[2, :size], w2, mixed[:size])
        _round_to_bf16(mixed_bits[:size], out[block:block + size], np.uint32(0))


def bf16_lerp_pair(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, w1: float, w2: float,
                   out: torch.Tensor) -> None:
    """`bf16_lerp_pair_span` into `out` over whole contiguous bfloat16 CPU tensors, on the calling
    thread (common.weighted_sum uses it on one torch thread only)."""
    target = flat_bf16_bits(out)
    bf16_lerp_pair_span(*(flat_bf16_bits(t) for t in (a, b, c)), np.float32(w1), np.float32(w2), 0, target.size,
                        target)


def histogram(kernel: Callable[..., None], keys: np.ndarray, *args) -> np.ndarray:
    """The 2¹⁶-bin counts of `kernel` (`top_digit_counts` or `digit_counts`) over `keys`, one row per
    span, summed."""
    rows = np.zeros((len(spans(keys.size)), DIGITS), dtype=np.int64)
    run_spans(kernel, keys.size, lambda i, start, stop: (keys, start, stop, *args, rows[i]))
    return rows.sum(axis=0)


def position_of_equal(keys: np.ndarray, key: int, nth: int) -> int:
    """The flat index of the nth (0-based) entry of `keys` equal to `key` (len(keys) when there are
    fewer): the equal ones are counted span by span, and the one span that holds the nth is scanned."""
    parts = spans(keys.size)
    found = np.zeros(len(parts), dtype=np.int64)
    run_spans(count_equal, keys.size, lambda i, start, stop: (keys, start, stop, key, found, i))
    before = 0
    for (start, stop), count in zip(parts, found.tolist()):
        if nth < before + count:
            return nth_equal(keys, start, stop, key, nth - before)
        before += count
    return keys.size


def rank_range_mask(keys: np.ndarray, low: tuple[int, int, int] | None,
                    high: tuple[int, int, int] | None) -> np.ndarray:
    """Boolean mask of the keys above `low` and below `high`, each a bound (key, from, to) whose equal
    keys count only at flat indices in [from, to); None for no bound (the dtype's extreme key, whose
    equal keys all count)."""
    out = np.empty(keys.size, dtype=np.bool_)
    limits = np.iinfo(keys.dtype)
    key = keys.dtype.type
    lo_key, lo_from, lo_to = low or (limits.min, 0, keys.size)
    hi_key, hi_from, hi_to = high or (limits.max, 0, keys.size)
    lo, hi = (key(lo_key), lo_from, lo_to), (key(hi_key), hi_from, hi_to)
    run_spans(rank_mask, keys.size, lambda i, start, stop: (keys, start, stop, *lo, *hi, out))
    return out


def masked_product(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`mask_product` over whole flat arrays (values float32 or float64, mask boolean)."""
    out = np.empty_like(values)
    dtype = values.dtype.type
    run_spans(mask_product, values.size, lambda i, start, stop: (values, mask, dtype(0), dtype(1), start, stop, out))
    return out


def task_vector_merge(models: Sequence[np.ndarray], base: np.ndarray, weights: Sequence[float], rules: np.ndarray,
                      consensus: bool, normalize: bool, divisor: float, lam: float) -> np.ndarray:
    """`task_vector_merge_span` over whole flat arrays of one dtype (float32 or float64)."""
    out = np.empty_like(base)
    dtype = base.dtype.type
    bits = np.int32 if base.dtype == np.float32 else np.int64
    arrays, scale = tuple(models), np.asarray(weights, dtype=dtype)

    def per_span(i: int, start: int, stop: int) -> tuple:
        tau = np.empty((len(arrays), CONSENSUS_BLOCK), dtype=dtype)
        return (arrays, base, scale, rules, bits(np.iinfo(bits).max), consensus, normalize, dtype(divisor),
                dtype(lam), dtype(0), dtype(1), tau, tau.view(bits), start, stop, out)

    run_spans(task_vector_merge_span, out.size, per_span)
    return out


def sign_consensus(weighted: Sequence[np.ndarray], weights: Sequence[float], normalize: bool) -> np.ndarray:
    """`sign_consensus_span` over whole flat arrays of one dtype (float32 or float64)."""
    out = np.empty_like(weighted[0])
    dtype = weighted[0].dtype.type
    arrays, scale = tuple(weighted), np.asarray(weights, dtype=dtype)
    run_spans(sign_consensus_span, out.size,
              lambda i, start, stop: (arrays, scale, dtype(0), dtype(1), normalize, start, stop, out))
    return out
