"""Time-aware stop: our StopPolicy vs a fixed 90 s signal lead vs the seed's running-max rule.

Simulates many walltime windows (one training attempt each) with jittery step times (a slow first
"compile" step, occasional spikes) and jittery save times, with periodic checkpoints. Our policy is the
REAL ``worker.deadline.StopPolicy`` driven by a fake clock, evaluated where the real loop evaluates it:
after every step, and again after a periodic save. Per policy we report missed deadlines (the final save
did not finish in time: the job is killed, the work since the last committed checkpoint is lost), the
work lost, and the idle tail (deadline minus end of the final save) — median and p95.

    python bench/deadline.py [--windows 1000] [--seed 0]

Writes bench/results/deadline.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from worker.config import TrainConfig
from worker.deadline import StopPolicy

FIXED_LEAD_S = 90.0


@dataclass
class Window:
    """One attempt: walltime, start-up, and the step/save time generators."""

    deadline: float
    startup: float
    step_base: float
    save_base: float
    ckpt_every: int
    state_prior: float  # what bytes / measured bandwidth predicts for a save (probe error included)
    rng: random.Random

    def step_time(self, index: int) -> float:
        t = self.step_base * self.rng.lognormvariate(0.0, 0.05)
        if index == 0:
            t *= self.rng.uniform(10, 60)  # torch.compile / autotuning / cold caches
        elif self.rng.random() < 0.02:
            t *= self.rng.uniform(2, 4)  # GC, a slow data shard, a noisy neighbour
        return t

    def save_time(self) -> float:
        return self.save_base * self.rng.uniform(0.85, 1.3)


def make_window(rng: random.Random) -> Window:
    step_base = rng.uniform(0.5, 8.0)
    save_base = rng.uniform(10.0, 90.0)
    return Window(
        deadline=rng.uniform(1800, 7200),
        startup=rng.uniform(20, 120),
        step_base=step_base,
        save_base=save_base,
        ckpt_every=max(1, round(600 / step_base)),  # a periodic checkpoint about every 10 minutes
        state_prior=save_base * rng.uniform(0.6, 1.5),
        rng=random.Random(rng.getrandbits(64)),
    )


@dataclass
class Outcome:
    missed: bool
    idle_tail: float | None
    work_lost: float
    steps: int
    step_times: list[float] = field(repr=False)
    save_times: list[float] = field(repr=False)


# A rule decides at a step boundary; it sees the clock and everything measured so far.
Rule = Callable[[float, "Sim"], bool]


@dataclass
class Sim:
    w: Window
    t: float
    last_commit: float
    step_times: list[float] = field(default_factory=list)
    save_times: list[float] = field(default_factory=list)

    def save(self) -> float:
        s = self.w.save_time()
        self.t += s
        self.save_times.append(s)
        if self.t <= self.w.deadline:
            self.last_commit = self.t
        return s


def simulate(w: Window, policy: str, margin: float) -> Outcome:
    sim = Sim(w=w, t=w.startup, last_commit=w.startup)
    clock = lambda: sim.t  # noqa: E731 - the fake clock the real policy reads
    ours = StopPolicy(margin=margin, clock=clock)
    ours.set_state_size(int(w.state_prior * 1e6), 1e6)  # bytes / bandwidth = the prior save time
    seed = {"max_iter": 1.0, "max_ckpt": 10.0, "buffer": 10 * 1.0 + 2 * 10.0}  # the seed's defaults

    def check() -> bool:
        if policy == "ours":
            return ours.should_stop(w.deadline)
        if policy == "fixed-lead":
            return sim.t >= w.deadline - FIXED_LEAD_S  # the signal arrived during the last step/save
        raise AssertionError(policy)

    steps = 0
    committed_step = 0 if policy == "ours" else -1  # resumed state = step 0: saving it again is pointless
    stop = policy == "ours" and check()  # before the first step only our policy looks
    while not stop and sim.t < w.deadline:
        if policy == "seed":  # decided at the top of the step, acted on after it
            threshold = seed["max_iter"] + seed["max_ckpt"] + seed["buffer"]
            stop_after = (w.deadline - sim.t) < threshold
        ours.begin_step()
        dt = w.step_time(steps)
        sim.t += dt
        ours.end_step()
        sim.step_times.append(dt)
        steps += 1
        if policy == "seed":
            seed["max_iter"] = max(seed["max_iter"], dt)
            seed["buffer"] = 5 * seed["max_iter"] + 1 * seed["max_ckpt"]
            if steps % w.ckpt_every == 0:
                seed["max_ckpt"] = max(seed["max_ckpt"], sim.save())  # the seed saves a final one anyway
            stop = stop_after
            continue
        if check():
            break
        if steps % w.ckpt_every == 0:
            ours.record_save(sim.save())
            committed_step = steps
            stop = check()
    if sim.t < w.deadline and committed_step != steps:
        sim.save()  # the final save (none when the stop came right after a periodic one)
    missed = sim.t > w.deadline
    return Outcome(
        missed=missed,
        idle_tail=None if missed else w.deadline - sim.t,
        work_lost=(w.deadline - sim.last_commit) if missed else 0.0,
        steps=steps,
        step_times=sim.step_times,
        save_times=sim.save_times,
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--margin", type=float, default=TrainConfig.model_fields["deadline_margin"].default)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "deadline.json")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    windows = [make_window(rng) for _ in range(args.windows)]
    results: dict[str, dict[str, float]] = {}
    ratios_ours: list[float] = []
    for policy in ("ours", "fixed-lead", "seed"):
        outcomes = []
        for i, w in enumerate(windows):
            w.rng = random.Random(args.seed * 1_000_003 + i)  # same jitter sequence for every policy
            outcomes.append(simulate(w, policy, args.margin))
        tails = [o.idle_tail for o in outcomes if o.idle_tail is not None]
        if policy == "ours":
            for o in outcomes:
                if o.idle_tail is not None:
                    yardstick = pct(o.step_times[1:] or o.step_times, 0.95) + statistics.fmean(o.save_times)
                    ratios_ours.append(o.idle_tail / yardstick)
        results[policy] = {
            "windows": len(outcomes),
            "missed": sum(o.missed for o in outcomes),
            "work_lost_total_s": sum(o.work_lost for o in outcomes),
            "work_lost_mean_s": statistics.fmean(o.work_lost for o in outcomes),
            "idle_tail_median_s": statistics.median(tails) if tails else float("nan"),
            "idle_tail_p95_s": pct(tails, 0.95),
        }
    ours = results["ours"]
    goals = {
        "zero_missed": ours["missed"] == 0,
        "median_tail_over_p95step_plus_save": statistics.median(ratios_ours),
        "median_tail_within_2x": statistics.median(ratios_ours) <= 2.0,
        "smaller_than_baselines": all(
            ours["idle_tail_median_s"] < results[b]["idle_tail_median_s"] for b in ("fixed-lead", "seed")
        ),
    }
    print(f"{args.windows} windows, margin {args.margin:.0f} s (ours), fixed lead {FIXED_LEAD_S:.0f} s")
    print(
        f"{'policy':<12}{'missed':>8}{'lost total s':>14}{'lost mean s':>13}"
        f"{'tail med s':>12}{'tail p95 s':>12}"
    )
    for name, r in results.items():
        print(
            f"{name:<12}{r['missed']:>8.0f}{r['work_lost_total_s']:>14.0f}{r['work_lost_mean_s']:>13.1f}"
            f"{r['idle_tail_median_s']:>12.1f}{r['idle_tail_p95_s']:>12.1f}"
        )
    print(
        "ours: median idle tail / (p95 step + mean save) =",
        f"{goals['median_tail_over_p95step_plus_save']:.2f}",
    )
    print("goals:", {k: v for k, v in goals.items() if isinstance(v, bool)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "windows": args.windows,
        "seed": args.seed,
        "margin_s": args.margin,
        "results": results,
        "goals": goals,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    return (
        0
        if goals["zero_missed"] and goals["median_tail_within_2x"] and goals["smaller_than_baselines"]
        else 1
    )


if __name__ == "__main__":
    raise SystemExit(main())
