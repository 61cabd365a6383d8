"""Exact order statistics of magnitudes by radix selection over their bit patterns, in O(n) passes.

The magnitude |x| of a float, read as a signed integer of the same width, is non-negative and ordered
as the magnitudes (NaN above +inf). A histogram (`bincount`) of the top 16 bits of those keys finds the
bucket that holds a given rank; only that bucket's few keys are kept for the next 16 bits, until every
bit is resolved. No sort of the whole tensor is made, and the values found are exactly those a sort
would give.

Equal magnitudes are ordered by their flat index, as a stable sort orders them: where a cut falls inside
a run of equal magnitudes, the ones of lower index come first (lowest ranks ascending; kept first by
`top_k_mask`, as a stable descending sort).

On the contiguous CPU tensors that `compiled.uses_cpu_kernels` takes the histograms, the search for the
j-th equal key and the masks run as compiled kernels (cpu_kernels.py, imported on first use), one pass
each over the keys split across torch's threads; elsewhere (CUDA, small tensors) as torch ops. Both
give the same statistics and masks.

`row_order` gives the full ascending order of every row (DELLA ranks each entry in its row): on the CPU
each key is packed with its column into one int64 and the packed values, which are all distinct, are
sorted by numpy's vectorized sort; their low bits are then the order a stable sort gives.
"""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from alloy.merge.methods import compiled

KEY_DTYPES = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
              torch.float64: torch.int64}
DIGIT_BITS = 16
DIGIT_MASK = (1 << DIGIT_BITS) - 1


def magnitude_keys(x: torch.Tensor) -> torch.Tensor:
    """|x| as non-negative integers of its width whose order is the order of the magnitudes."""
    return x.abs().view(KEY_DTYPES[x.dtype])


def value_keys(x: torch.Tensor) -> torch.Tensor:
    """x as signed integers of its width whose order is the order of the values (-0 just below +0)."""
    bits = x.view(KEY_DTYPES[x.dtype])
    return torch.where(bits < 0, bits ^ torch.iinfo(bits.dtype).max, bits)


def key_value(key: int, dtype: torch.dtype) -> float:
    """The float of `dtype` whose key (`value_keys`, or `magnitude_keys` of a non-negative float) is `key`."""
    int_dtype = KEY_DTYPES[dtype]
    bits = key ^ torch.iinfo(int_dtype).max if key < 0 else key
    return float(torch.tensor([bits], dtype=int_dtype).view(dtype))


@dataclass(frozen=True)
class OrderStatistic:
    """The key at one ascending rank, with how many keys are smaller (`below`) and equal (`equal`)."""

    key: int
    below: int
    equal: int


def order_statistics(keys: torch.Tensor, ranks: Sequence[int]) -> list[OrderStatistic]:
    """The keys at the given ascending ranks (0-based) of the integer tensor `keys` (`magnitude_keys` or
    `value_keys`).

    The first 16-bit digit (offset by 2¹⁵, so that negative keys count too) is counted for all ranks in
    one pass over `keys`; each rank then resolves its remaining digits among the keys of its bucket only.
    """
    flat = keys.reshape(-1)
    if compiled.uses_cpu_kernels(flat):
        return _cpu_order_statistics(compiled.kernels().flat_numpy(flat), ranks)
    return _torch_order_statistics(flat, ranks)


def _cpu_order_statistics(keys: np.ndarray, ranks: Sequence[int]) -> list[OrderStatistic]:
    """`order_statistics` by the compiled histograms: one pass over all keys per digit and rank."""
    cpu_kernels = compiled.kernels()
    top_shift = keys.itemsize * 8 - DIGIT_BITS
    offset = 1 << (DIGIT_BITS - 1)
    counts = cpu_kernels.histogram(cpu_kernels.top_digit_counts, keys, top_shift, offset).cumsum()
    found = []
    for rank in ranks:
        bucket, below = _bucket(counts, rank)
        prefix, equal, shift = (bucket - offset) << top_shift, _count(counts, bucket), top_shift
        rank -= below
        while shift > 0:
            shift -= DIGIT_BITS
            high_shift = shift + DIGIT_BITS
            digits = cpu_kernels.histogram(cpu_kernels.digit_counts, keys, high_shift, prefix >> high_shift,
                                           shift).cumsum()
            digit, before = _bucket(digits, rank)
            prefix |= digit << shift
            below, rank, equal = below + before, rank - before, _count(digits, digit)
        found.append(OrderStatistic(prefix, below, equal))
    return found


def _torch_order_statistics(flat: torch.Tensor, ranks: Sequence[int]) -> list[OrderStatistic]:
    """`order_statistics` of a flat tensor by torch ops (`bincount` histograms), on any device."""
    shift = flat.element_size() * 8 - DIGIT_BITS
    offset = 1 << (DIGIT_BITS - 1)
    top = (flat >> shift) + offset if shift > 0 else flat.to(torch.int32) + offset
    counts = _cumulative(torch.bincount(top, minlength=1 << DIGIT_BITS))
    found = []
    for rank in ranks:
        bucket, below = _bucket(counts, rank)
        prefix = (bucket - offset) << shift
        if shift == 0:
            found.append(OrderStatistic(prefix, below, _count(counts, bucket)))
            continue
        found.append(_resolve(flat[top == bucket], rank - below, prefix, below, shift - DIGIT_BITS))
    return found


def _bucket(cumulative: np.ndarray, rank: int) -> tuple[int, int]:
    """The first bucket whose cumulative count exceeds `rank`, and the count of the buckets before it."""
    bucket = int(np.searchsorted(cumulative, rank, side="right"))
    return bucket, int(cumulative[bucket - 1]) if bucket > 0 else 0


def _count(cumulative: np.ndarray, bucket: int) -> int:
    return int(cumulative[bucket]) - (int(cumulative[bucket - 1]) if bucket > 0 else 0)


def _cumulative(counts: torch.Tensor) -> np.ndarray:
    """Running totals of a torch histogram, as a numpy array on the CPU (for `_bucket` and `_count`)."""
    return counts.cumsum(0).cpu().numpy()


def _resolve(candidates: torch.Tensor, rank: int, prefix: int, below: int, shift: int) -> OrderStatistic:
    """Resolve the digits at `shift` and below among the `candidates` that share the higher digits."""
    while True:
        digits = (candidates >> shift) & DIGIT_MASK if shift > 0 else candidates & DIGIT_MASK
        counts = _cumulative(torch.bincount(digits, minlength=1 << DIGIT_BITS))
        digit, before = _bucket(counts, rank)
        prefix |= digit << shift
        below += before
        if shift == 0:
            return OrderStatistic(prefix, below, _count(counts, digit))
        candidates = candidates[digits == digit]
        rank -= before
        shift -= DIGIT_BITS


def rank_range_mask(keys: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Boolean mask (of `keys`' shape) of the entries whose ascending rank lies in [start, stop), equal keys
    ranked by flat index."""
    n = keys.numel()
    start, stop = max(0, start), min(n, stop)
    if start >= stop:
        return torch.zeros(keys.shape, dtype=torch.bool, device=keys.device)
    if start == 0 and stop == n:
        return torch.ones(keys.shape, dtype=torch.bool, device=keys.device)
    flat = keys.reshape(-1)
    if compiled.uses_cpu_kernels(flat):
        return _compiled_mask(flat, rank_range_bounds(flat, start, stop)).view(keys.shape)
    low, high = _range_statistics(flat, start, stop)
    if low is not None and high is not None:
        mask = (flat > low.key) & (flat < high.key) if low.key != high.key else torch.zeros_like(flat, dtype=torch.bool)
    elif low is not None:
        mask = flat > low.key
    else:
        mask = flat < high.key
    for stat in {s.key: s for s in (low, high) if s is not None}.values():
        _mark_equal(mask, flat, stat.key, max(start, stat.below) - stat.below,
                    min(stop, stat.below + stat.equal) - stat.below, stat.equal)
    return mask.view(keys.shape)


def _range_statistics(flat: torch.Tensor, start: int, stop: int) -> tuple[OrderStatistic | None, OrderStatistic | None]:
    """The order statistics at ranks `start` (None when 0) and `stop` − 1 (None when it is the last)."""
    n = flat.numel()
    wanted = ([start] if start > 0 else []) + ([stop - 1] if stop < n else [])
    stats = order_statistics(flat, wanted)
    return (stats[0] if start > 0 else None), (stats[-1] if stop < n else None)


# A bound of a kept range of keys, as the compiled kernels take it: (key, first, last) keeps the keys on
# its inner side of `key`, and those equal to it at flat indices in [first, last); None for no bound.
KeyBound = tuple[int, int, int] | None


def rank_range_bounds(flat: torch.Tensor, start: int, stop: int) -> tuple[KeyBound, KeyBound]:
    """The (low, high) bounds of the keys of ascending rank in [start, stop) (0 <= start < stop <= n, not
    the whole range) of a flat CPU tensor the compiled kernels take, equal keys ranked by flat index."""
    low, high = _range_statistics(flat, start, stop)
    # the keys equal to `low` count from rank `start` on, those equal to `high` up to rank `stop`
    return _kernel_bounds(flat, (low, start - low.below, low.equal) if low else None,
                          (high, 0, stop - high.below) if high else None)


def top_k_bounds(flat: torch.Tensor, k: int) -> tuple[KeyBound, KeyBound]:
    """The (low, high) bounds of the k largest keys (0 < k < n) of a flat CPU tensor the compiled kernels
    take; among equal keys at the cut, those of lower flat index."""
    n = flat.numel()
    (cut,) = order_statistics(flat, [n - k])
    return _kernel_bounds(flat, (cut, 0, cut.below + cut.equal - (n - k)), None)


_Bound = tuple[OrderStatistic, int, int]


def _kernel_bounds(flat: torch.Tensor, low: _Bound | None, high: _Bound | None) -> tuple[KeyBound, KeyBound]:
    """The kernels' bounds for `low` and `high`: each (stat, first, last) also takes the keys equal to
    `stat.key` from the first-th to before the last-th of them in flat-index order (as `_mark_equal`
    does); the positions of those are found by the compiled search for the nth equal key."""
    cpu_kernels = compiled.kernels()
    keys = cpu_kernels.flat_numpy(flat)

    def position(stat: OrderStatistic, nth: int) -> int:
        # the flat index of the nth (0-based) key equal to stat.key: 0 for the first, len(keys) past the last
        if nth <= 0:
            return 0
        return keys.size if nth >= stat.equal else cpu_kernels.position_of_equal(keys, stat.key, nth)

    def kernel_bound(bound: _Bound | None) -> KeyBound:
        return (bound[0].key, position(bound[0], bound[1]), position(bound[0], bound[2])) if bound else None

    return kernel_bound(low), kernel_bound(high)


def _compiled_mask(flat: torch.Tensor, bounds: tuple[KeyBound, KeyBound]) -> torch.Tensor:
    """The compiled mask of the keys within `bounds`."""
    cpu_kernels = compiled.kernels()
    return torch.from_numpy(cpu_kernels.rank_range_mask(cpu_kernels.flat_numpy(flat), *bounds))


def _mark_equal(mask: torch.Tensor, flat: torch.Tensor, key: int, first: int, last: int, equal: int) -> None:
    """Mark the entries equal to `key` whose position in flat-index order among them is in [first, last):
    those equal entries are exactly the ones inside one index span, which is found by counting them
    block by block."""
    if first >= last:
        return
    same = flat == key
    if first == 0 and last == equal:
        mask |= same
        return
    begin = _position_of(same, first) if first > 0 else 0
    end = _position_of(same, last) if last < equal else flat.numel()
    mask[begin:end] |= same[begin:end]


# Entries per block when counting equal keys to find where the j-th one lies.
TIE_BLOCK = 1 << 12


def _position_of(same: torch.Tensor, j: int) -> int:
    """The flat index of the j-th (0-based) true entry of the boolean vector `same`."""
    whole = same.numel() // TIE_BLOCK * TIE_BLOCK
    per_block = _cumulative(same[:whole].view(-1, TIE_BLOCK).sum(dim=1, dtype=torch.int64))
    block, before = _bucket(per_block, j) if whole else (0, 0)
    start = block * TIE_BLOCK
    span = same[start:start + TIE_BLOCK] if start < whole else same[whole:]
    return start + int(torch.nonzero(span)[j - before])


def top_k_mask(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k largest keys; among equal keys at the cut, those of lower flat index (the
    first k of a stable descending sort)."""
    n = keys.numel()
    if k <= 0 or k >= n:
        return torch.full(keys.shape, k > 0, dtype=torch.bool, device=keys.device)
    flat = keys.reshape(-1)
    if compiled.uses_cpu_kernels(flat):
        return _compiled_mask(flat, top_k_bounds(flat, k)).view(keys.shape)
    (cut,) = order_statistics(flat, [n - k])
    kept_equal = cut.below + cut.equal - (n - k)
    mask = flat > cut.key
    _mark_equal(mask, flat, cut.key, 0, kept_equal, cut.equal)
    return mask.view(keys.shape)


def row_order(keys: torch.Tensor) -> torch.Tensor:
    """The indices that sort each row of the 2-D tensor of non-negative integer `keys` (`magnitude_keys`)
    ascending, equal keys by column: those of `torch.sort(keys, dim=1, stable=True)`.

    On the CPU (where the key and column bits fit 63 bits) key·2^b + column is sorted as plain int64
    values, rows split over torch's threads; elsewhere a stable torch sort.
    """
    width = keys.shape[1]
    column_bits = max(1, (width - 1).bit_length())
    if keys.device.type != "cpu" or torch.iinfo(keys.dtype).bits - 1 + column_bits > 63:
        return torch.sort(keys, dim=1, stable=True).indices
    packed = (keys.to(torch.int64) << column_bits).bitwise_or_(torch.arange(width, dtype=torch.int64))
    rows = np.array_split(packed.numpy(), max(1, min(torch.get_num_threads(), keys.shape[0])), axis=0)
    if len(rows) == 1:
        rows[0].sort(axis=1)
    else:
        with ThreadPoolExecutor(len(rows)) as pool:  # numpy's sort releases the GIL
            list(pool.map(lambda part: part.sort(axis=1), rows))
    return packed.bitwise_and_((1 << column_bits) - 1)
