"""Min/max bucket downsampling: bounded, ordered, keeps every extreme, agrees with a plain loop."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from controller.web.downsample import downsample, minmax_indices


def reference_indices(ys: list[float], max_points: int) -> list[int]:
    """The same contract written as a plain loop over the bucket edges (slow, obviously right)."""
    valid = [i for i, y in enumerate(ys) if not math.isnan(y)]
    if len(valid) <= max_points:
        return valid
    inner = valid[1:-1]
    n_buckets = (max_points - 2) // 2
    edges = [int(e) for e in np.linspace(0, len(inner), n_buckets + 1)]
    chosen = {valid[0], valid[-1]}
    for b in range(n_buckets):
        bucket = inner[edges[b] : edges[b + 1]]
        chosen.add(min(bucket, key=lambda i: (ys[i], i)))
        chosen.add(max(bucket, key=lambda i: (ys[i], -i)))
    return sorted(chosen)


def test_short_series_is_returned_whole() -> None:
    assert minmax_indices([3.0, 1.0, 2.0], 10) == [0, 1, 2]
    assert minmax_indices([], 10) == []


def test_nan_points_are_never_selected() -> None:
    ys = [1.0, math.nan, 2.0, math.nan]
    assert minmax_indices(ys, 10) == [0, 2]
    many = [math.nan if i % 3 == 0 else float(i) for i in range(1000)]
    idx = minmax_indices(many, 50)
    assert idx and all(not math.isnan(many[i]) for i in idx)


@pytest.mark.parametrize("n,max_points,seed", [(1000, 100, 0), (100_000, 1000, 1), (999, 4, 2), (10, 9, 3)])
def test_matches_reference_and_is_bounded(n: int, max_points: int, seed: int) -> None:
    rng = random.Random(seed)
    ys = [rng.gauss(0, 1) for _ in range(n)]
    got = minmax_indices(ys, max_points)
    assert len(got) <= max_points
    assert got == sorted(set(got))
    assert got == reference_indices(ys, max_points)
    assert got[0] == 0 and got[-1] == n - 1


def test_spike_survives_heavy_reduction() -> None:
    ys = [2.0 - i * 1e-5 for i in range(100_000)]
    ys[61_234] = 50.0  # a loss spike
    ys[70_001] = -3.0  # and a dip
    idx = minmax_indices(ys, 200)
    assert 61_234 in idx and 70_001 in idx


def test_rejects_too_small_budget() -> None:
    with pytest.raises(ValueError, match="max_points must be at least 4"):
        minmax_indices([1.0] * 10, 3)


def test_downsample_drops_none_and_keeps_pairs() -> None:
    xs = [float(i) for i in range(10)]
    ys: list[float | None] = [None if i == 4 else float(i * i) for i in range(10)]
    out_x, out_y = downsample(xs, ys, 100)
    assert 4.0 not in out_x
    assert all(y == x * x for x, y in zip(out_x, out_y, strict=True))
    with pytest.raises(ValueError, match="differ in length"):
        downsample([1.0], [1.0, 2.0], 10)
