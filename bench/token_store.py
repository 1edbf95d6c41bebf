"""Token store vs streaming Parquet: per-rank tokens/s at several world sizes, and tokenize speed.

One corpus is made offline (the sample corpus repeated to ``--size-mb``, as bench/data.py makes
it) and tokenized into a store with ``pyrecover data tokenize``, once with one worker and once
with every core (each in a fresh process; the two stores must be byte-identical). Then rank r of
world W is built alone (a simulated rank, which reads exactly what it would in a real job) and
timed for ``--seconds``, for the streaming ``IterableParquetDataset`` and for the store's
``TokenStoreDataset``, alternating, best of ``--rounds``. The store is read from a warm page
cache (its files are read once first) by one thread (torch.set_num_threads(1)); the streaming
path runs as in training (the tokenizer's own threads included). Tokens are input positions
delivered to the rank (local batch × L per batch), per wall second and per CPU-second of the
reading process: on a machine other jobs load, the CPU-second rate is what one core gives,
and the goals below are judged on it (the wall-clock figures are printed beside them).

    python bench/token_store.py [--dir DIR] [--size-mb 50] [--seq-len 512] [--batch 4]
                                [--worlds 1 8 64] [--seconds 2] [--rounds 3] [--shard-mb 8]

Goals: the store gives world 64 >= 90% of world 1's per-rank tokens/s, and >= 1M tokens/s per
rank on one core. Also reported: tokenize tokens/s with every core against one, and the one-core
build's peak RSS for a corpus 1/5 the size (bounded memory: it should hardly grow). The CPU
time of each build (its pool workers included) shows how many cores it kept busy: on a machine
others load, the wall-clock ratio alone understates what every core gives.
Writes bench/results/token_store.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from bench.data import generate  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "token_store.json"

_TOKENIZE_CHILD = """
import json, sys, time
from worker.data.prepare import main
t0 = time.perf_counter()
rc = main(sys.argv[1:])
seconds = time.perf_counter() - t0
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"rc": rc, "seconds": seconds, "peak_rss_mb": hwm / 1024}))
"""


def tokenize(corpus: Path, tokenizer: Path, out: Path, workers: int, shard_mb: float) -> dict[str, Any]:
    """``pyrecover data tokenize`` in a fresh process; its wall time (process start included)."""
    args = ["tokenize", "--dataset", str(corpus), "--tokenizer-name-or-path", str(tokenizer),
            "--out", str(out), "--workers", str(workers), "--shard-mb", str(shard_mb), "--quiet"]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _TOKENIZE_CHILD, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child and its pool workers, all waited for
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"tokenize failed:\n{proc.stderr[-3000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    manifest = json.loads((out / "manifest.json").read_text())
    tokens = manifest["counts"]["tokens"]
    return {"workers": workers, "wall_s": wall, "build_s": child["seconds"], "tokens": tokens,
            "tokens_per_s": tokens / wall, "peak_rss_mb": child["peak_rss_mb"], "cpu_s": cpu,
            "cores_busy": cpu / wall, "tokens_per_cpu_s": tokens / cpu,
            "shards": manifest["counts"]["shards"]}  # fmt: skip


def same_files(a: Path, b: Path) -> bool:
    def files(d: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}

    return files(a) == files(b)


def measure(make: Any, *, seconds: float, min_batches: int = 3) -> dict[str, Any]:
    """Tokens one dataset delivers per second of wall time and per CPU-second of this process
    (all its threads), over at least ``seconds`` after one warm-up batch."""
    it = iter(make())
    next(it)
    batches = tokens = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - t0) < seconds or batches < min_batches:
        inputs, _ = next(it)
        tokens += inputs.numel()
        batches += 1
    cpu = time.process_time() - c0
    return {"tokens_per_s": tokens / elapsed, "tokens_per_cpu_s": tokens / cpu, "batches": batches,
            "seconds": elapsed, "cpu_s": cpu}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the corpus and stores go (default: temp)"
    )
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4, help="local batch (sequences per rank)")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--shard-mb", type=float, default=8.0, help="store shard size: enough units to keep every core busy"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    opts = parser.parse_args(argv)

    import torch

    from worker.data import IterableParquetDataset, load_tokenizer
    from worker.data.prepare import ensure_sample_data
    from worker.data.store_dataset import TokenStoreDataset
    from worker.data.store_manifest import MANIFEST_NAME
    from worker.data.token_store import TokenStore

    cores = len(os.sched_getaffinity(0))
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pyrecover-bench-store-") as tmp:
        work = opts.dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sample, tok_dir = ensure_sample_data(work / "sample")
        corpus = generate(sample, work / f"corpus-{opts.size_mb}mb.parquet", opts.size_mb)
        small = generate(
            sample, work / f"corpus-{max(opts.size_mb // 5, 1)}mb.parquet", max(opts.size_mb // 5, 1)
        )
        corpus_mb, small_mb = corpus.stat().st_size / 1e6, small.stat().st_size / 1e6
        stores = {n: work / f"store-{n}" for n in ("1", "all", "small")}
        for d in stores.values():
            if (d / MANIFEST_NAME).exists():  # a kept --dir: measure a real build, not "already fresh"
                for p in d.iterdir():
                    p.unlink()
        print(f"tokenizing {corpus_mb:.0f} MB: 1 worker, then {cores}", file=sys.stderr)
        one = tokenize(corpus, tok_dir, stores["1"], 1, opts.shard_mb)
        every = tokenize(corpus, tok_dir, stores["all"], cores, opts.shard_mb)
        small_one = tokenize(small, tok_dir, stores["small"], 1, opts.shard_mb)
        identical = same_files(stores["1"], stores["all"])

        tokenizer = load_tokenizer(tok_dir)
        store = TokenStore(stores["1"])
        for sh in store.manifest["shards"]:  # warm the page cache
            (stores["1"] / f"{sh['name']}.tokens").read_bytes()
        torch.set_num_threads(1)
        common = {"sequence_length": opts.seq_len, "local_batch_size": opts.batch, "bos_token_id": 0}

        def streaming(world: int, rank: int) -> Any:
            return lambda: IterableParquetDataset(corpus, tokenizer, rank=rank, world_size=world, **common)

        def stored(world: int, rank: int) -> Any:
            return lambda: TokenStoreDataset(store, rank=rank, world_size=world, **common)

        cases = [("streaming", w, 0) for w in opts.worlds]
        cases += [("store", w, r) for w in opts.worlds for r in sorted({0, w - 1})]
        best: dict[tuple[str, int, int], dict[str, Any]] = {}
        for _ in range(opts.rounds):
            for source, world, rank in cases:
                make = (streaming if source == "streaming" else stored)(world, rank)
                r = measure(make, seconds=opts.seconds)
                print(f"  {source:<9} world {world:>3} rank {rank:>3}: {r['tokens_per_s']:>14,.0f} tok/s",
                      file=sys.stderr)  # fmt: skip
                key = (source, world, rank)
                # Best of the rounds, per metric: a burst of load from others only ever slows one down.
                best[key] = {k: max(v, best.get(key, {}).get(k, v)) for k, v in r.items()}

    def rate(source: str, world: int, metric: str = "tokens_per_cpu_s") -> float:
        """The slowest measured rank of that world (a job runs at its slowest rank's pace)."""
        return min(v[metric] for (s, w, _), v in best.items() if s == source and w == world)

    wall = "tokens_per_s"
    w1, wmax = min(opts.worlds), max(opts.worlds)
    scaling = rate("store", wmax) / rate("store", w1)
    scaling_wall = rate("store", wmax, wall) / rate("store", w1, wall)
    stream_scaling = rate("streaming", wmax) / rate("streaming", w1)
    store_min = min(rate("store", w) for w in opts.worlds)
    store_min_wall = min(rate("store", w, wall) for w in opts.worlds)
    record = {
        "bench": "token_store",
        "when": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": cores, "load_average_1m": os.getloadavg()[0], "load_average_1m_at_start": load0},
        "corpus_mb": corpus_mb,
        "seq_len": opts.seq_len,
        "local_batch": opts.batch,
        "seconds_per_measurement": opts.seconds,
        "rounds": opts.rounds,
        "per_rank": [{"source": s, "world": w, "rank": r, **v} for (s, w, r), v in sorted(best.items())],
        "store_world_scaling_per_cpu_s": scaling,
        "store_world_scaling_wall": scaling_wall,
        "streaming_world_scaling_per_cpu_s": stream_scaling,
        "store_over_streaming_per_cpu_s": {
            str(w): rate("store", w) / rate("streaming", w) for w in opts.worlds
        },
        "store_min_tokens_per_cpu_s": store_min,
        "store_min_tokens_per_s_wall": store_min_wall,
        "small_corpus_mb": small_mb,
        "tokenize": {
            "one_worker": one,
            "every_core": every,
            "speedup": every["tokens_per_s"] / one["tokens_per_s"],
            "identical_stores": identical,
            "small_corpus_one_worker": small_one,
        },
        "goals": {
            f"store_world_{wmax}_at_least_90pct_of_world_{w1}": scaling >= 0.9,
            "store_at_least_1M_tokens_per_s_per_rank": min(store_min, store_min_wall) >= 1e6,
            "stores_identical_whatever_the_workers": identical,
        },
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(record, indent=2) + "\n")

    print(f"\nper-rank tokens: L={opts.seq_len}, local batch {opts.batch}, best of {opts.rounds} x "
          f"{opts.seconds:g} s, slowest of ranks 0 and W-1 for the store; per wall second and per "
          f"CPU-second of the reading process (load average {load0:.1f} on {cores} CPUs)")  # fmt: skip
    print(f"{'world':>6} {'streaming/s':>12} {'store/s':>12} {'ratio':>7}   "
          f"{'streaming/CPU-s':>15} {'store/CPU-s':>12} {'ratio':>7}")  # fmt: skip
    for w in opts.worlds:
        print(f"{w:>6} {rate('streaming', w, wall):>12,.0f} {rate('store', w, wall):>12,.0f} "
              f"{rate('store', w, wall) / rate('streaming', w, wall):>6,.0f}x   "
              f"{rate('streaming', w):>15,.0f} {rate('store', w):>12,.0f} "
              f"{rate('store', w) / rate('streaming', w):>6,.0f}x")  # fmt: skip
    print(f"store world {wmax} / world {w1}: {scaling:.1%} per CPU-second (goal >= 90%), {scaling_wall:.1%} "
          f"per wall second; streaming: {stream_scaling:.1%}")  # fmt: skip
    print(f"store, slowest world: {store_min:,.0f} tokens per CPU-second per rank, {store_min_wall:,.0f} "
          f"per wall second, one thread (goal >= 1,000,000)")  # fmt: skip
    print(f"tokenize {one['tokens']:,} tokens: 1 worker {one['tokens_per_s']:,.0f} tok/s "
          f"({one['wall_s']:.1f} s), "
          f"{cores} workers {every['tokens_per_s']:,.0f} tok/s ({every['wall_s']:.1f} s): "
          f"{record['tokenize']['speedup']:.2f}x; identical stores: {identical}")  # fmt: skip
    print(f"  cores kept busy: {one['cores_busy']:.2f} with 1 worker, {every['cores_busy']:.2f} with {cores} "
          f"(load average {record['machine']['load_average_1m']:.1f}); tokens per CPU-second "
          f"{one['tokens_per_cpu_s']:,.0f} and {every['tokens_per_cpu_s']:,.0f}")  # fmt: skip
    print(f"one-worker build peak RSS: {small_one['peak_rss_mb']:.0f} MB for {small_mb:.0f} MB of Parquet, "
          f"{one['peak_rss_mb']:.0f} MB for {corpus_mb:.0f} MB")  # fmt: skip
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
