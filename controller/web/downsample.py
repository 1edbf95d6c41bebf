"""Downsampling of long metric series for charts: min/max buckets, a pure function.

A run that trains for a week reports hundreds of thousands of points; a chart is ~1,000 pixels
wide. We cut the x range into ``max_points // 2`` buckets of equal point count and keep, per
bucket, the points holding the minimum and the maximum y, in x order. Unlike averaging (or
plain striding) this never hides a loss spike or a dip: every extreme survives at any zoom-out,
which is what someone watching a run for divergence needs. The first and last points are always
kept so the chart spans the whole run and ends at the newest value.

Vectorised with numpy: 100,000 points take a few milliseconds, so a run page stays within its
latency budget without any cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

MIN_POINTS = 4


def minmax_indices(ys: Sequence[float] | npt.NDArray[np.float64], max_points: int) -> list[int]:
    """Indices (ascending) of at most ``max_points`` points that keep each bucket's extremes.

    ``ys`` are the values in x order; NaN values are never selected (a bucket that holds only
    NaN contributes nothing). With ``len(ys) <= max_points`` every non-NaN index is returned.
    Raises ``ValueError`` when ``max_points < 4`` (first, last, and one min/max pair).
    """
    if max_points < MIN_POINTS:
        raise ValueError(f"max_points must be at least {MIN_POINTS} (got {max_points})")
    y = np.asarray(ys, dtype=np.float64)
    finite = ~np.isnan(y)
    n = y.shape[0]
    if n <= max_points:
        return [int(i) for i in np.flatnonzero(finite)]
    valid = np.flatnonzero(finite)
    if valid.shape[0] <= max_points:
        return [int(i) for i in valid]
    # Work on the valid points only, then map back: buckets then hold real values only.
    yv = y[valid]
    first, last = 0, yv.shape[0] - 1
    inner = yv[1:last]
    n_buckets = (max_points - 2) // 2
    # Equal-count buckets over the inner points: bucket b spans [edges[b], edges[b + 1]).
    edges = np.linspace(0, inner.shape[0], n_buckets + 1).astype(np.int64)
    starts = edges[:-1]
    # np.minimum/maximum.reduceat give the extreme of each bucket; argmin/argmax positions follow
    # from comparing each point to its bucket's extreme and taking the first hit per bucket.
    bucket_of = np.repeat(np.arange(n_buckets), np.diff(edges))
    mins = np.minimum.reduceat(inner, starts)
    maxs = np.maximum.reduceat(inner, starts)
    positions = np.arange(inner.shape[0])
    is_min = inner == mins[bucket_of]
    is_max = inner == maxs[bucket_of]
    # First position per bucket where the condition holds (every bucket has at least one).
    min_pos = _first_per_bucket(positions[is_min], bucket_of[is_min])
    max_pos = _first_per_bucket(positions[is_max], bucket_of[is_max])
    chosen = np.unique(np.concatenate(([first], min_pos + 1, max_pos + 1, [last])))
    return [int(i) for i in valid[chosen]]


def _first_per_bucket(
    positions: npt.NDArray[np.int64], buckets: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """The smallest position of each bucket (``positions`` ascending, every bucket present)."""
    keep = np.ones(buckets.shape[0], dtype=bool)
    keep[1:] = buckets[1:] != buckets[:-1]
    result: npt.NDArray[np.int64] = positions[keep]
    return result


def downsample(
    xs: Sequence[float], ys: Sequence[float | None], max_points: int
) -> tuple[list[float], list[float]]:
    """``(xs, ys)`` reduced to at most ``max_points`` points by :func:`minmax_indices`.

    ``None`` values (a metric the worker did not report at that step, e.g. MFU on CPU) are
    dropped. ``xs`` must be in ascending order and as long as ``ys``.
    """
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys differ in length ({len(xs)} != {len(ys)})")
    y = np.array([np.nan if v is None else v for v in ys], dtype=np.float64)
    idx = minmax_indices(y, max_points)
    return [float(xs[i]) for i in idx], [float(y[i]) for i in idx]
