"""DDP and FSDP2, gradient accumulation and activation checkpointing (``worker/parallel.py``).

In-process tests train one rank through the real step code (``TrainingLoop._train_step``);
multi-rank ones run real worker processes (gloo on 127.0.0.1).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from train_launch import load_checkpoint, run_worker, tensors_equal, tiny_args

from shared.exit_codes import ExitCode
from worker.cli import main
from worker.components import build_components
from worker.config import ConfigError, parse_config
from worker.distributed import DistInfo
from worker.loop import TrainingLoop
from worker.loss_log import read_losses
from worker.parallel import micro_batches
from worker.reporting import NullReporter

ONE_RANK = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


def test_micro_batches_are_consecutive_equal_views_of_the_rank_share() -> None:
    inputs = torch.arange(6 * 3).view(6, 3)
    labels = inputs + 100
    parts = micro_batches(inputs, labels, 3)
    assert [x.tolist() for x, _ in parts] == [
        inputs[0:2].tolist(),
        inputs[2:4].tolist(),
        inputs[4:6].tolist(),
    ]
    assert all(torch.equal(y, x + 100) for x, y in parts)
    assert parts[1][0].data_ptr() == inputs[2].data_ptr()  # a view: no copy
    assert len(micro_batches(inputs, labels, 1)) == 1
    with pytest.raises(ValueError, match="gradient_accumulation_steps: 6 sequences per rank"):
        micro_batches(inputs, labels, 4)


def _steps(
    sample_data: tuple[Path, Path], tmp_path: Path, steps: int, *extra: str
) -> tuple[list[float], dict]:
    """Train ``steps`` steps in this process; returns (global mean losses, final model state)."""
    args = [*tiny_args(sample_data, tmp_path, "inproc", steps=steps, fmt="vanilla"), *extra]
    config = parse_config([*args, "--no-timeaware-checkpointing"])
    comp = build_components(config, ONE_RANK)
    state = SimpleNamespace(progress={"step": 0, "tokens_seen": 0})
    loop = TrainingLoop(
        config=config,
        info=ONE_RANK,
        comp=comp,
        manager=None,
        state=state,
        reporter=NullReporter(),
        clock=time.time,
    )
    comp.model.train()
    batches = iter(comp.dataset)
    losses = []
    for _ in range(steps):
        inputs, labels = next(batches)
        loss_sum, n_tokens, _ = loop._train_step(inputs, labels)
        losses.append(float(loss_sum) / n_tokens)
    return losses, {k: v.detach().clone() for k, v in comp.model.state_dict().items()}


def test_gradient_accumulation_gives_the_one_big_batch_update(
    sample_data: tuple[Path, Path], tmp_path: Path
) -> None:
    ref_losses, ref = _steps(sample_data, tmp_path, 4)
    for accumulation in ("2", "4"):
        losses, got = _steps(sample_data, tmp_path, 4, "--gradient-accumulation-steps", accumulation)
        assert losses == pytest.approx(ref_losses, rel=1e-6)
        for name, tensor in ref.items():
            # Only the order of the float additions differs (per micro-batch sums, then their sum).
            torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
        # ... and it is a real accumulation, not the same computation: the sums were reordered.
        assert any(not torch.equal(got[name], tensor) for name, tensor in ref.items())


def test_activation_checkpointing_is_bit_identical_on_cpu(
    sample_data: tuple[Path, Path], tmp_path: Path
) -> None:
    ref_losses, ref = _steps(sample_data, tmp_path, 3)
    losses, got = _steps(sample_data, tmp_path, 3, "--activation-checkpointing")
    assert losses == ref_losses
    assert tensors_equal(got, ref)


def test_activation_checkpointing_keeps_only_block_inputs() -> None:
    """The saved-tensor count of a forward pass falls to the blocks' inputs plus the tail's."""
    from worker.model import Transformer, model_args

    model = Transformer(model_args("tiny", vocab_size=300, seq_len=16))
    tokens = torch.randint(0, 300, (2, 16))

    def saved_bytes(recompute: bool) -> int:
        model.activation_checkpointing = recompute
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(tokens).sum().backward()
        return total

    assert saved_bytes(True) < saved_bytes(False) / 2


def test_batch_that_does_not_split_into_micro_batches_is_refused_naming_the_field(
    sample_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_args(sample_data, tmp_path, "bad", steps=2, fmt="vanilla")  # batch 4
    with pytest.raises(ConfigError, match=r"^gradient_accumulation_steps: the global batch"):
        parse_config([*args, "--gradient-accumulation-steps", "3"])
    config = parse_config([*args, "--gradient-accumulation-steps", "4"])
    with pytest.raises(ConfigError, match=r"^gradient_accumulation_steps: each rank's 2 sequences"):
        config.check_world_size(2)
    assert main([*args, "--gradient-accumulation-steps", "0"]) == ExitCode.CONFIG_ERROR
    assert "gradient_accumulation_steps" in capsys.readouterr().err


def test_two_rank_fsdp_with_accumulation_and_checkpointing_matches_one_rank_ddp(
    sample_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """2 ranks × 2 micro-batches under FSDP with recomputation train on the same global batches as
    one DDP rank with one batch: the losses agree within the elastic tests' tolerance."""
    steps = 6
    assert main(tiny_args(sample_data, tmp_path, "ref", steps=steps, fmt="dcp")) == ExitCode.OK
    args = tiny_args(sample_data, tmp_path, "fsdp", steps=steps, fmt="dcp")
    extra = ["--parallelism", "fsdp", "--gradient-accumulation-steps", "2", "--activation-checkpointing"]
    result = run_worker([*args, *extra], world_size=2)
    assert result.ok, result.explain()
    assert (
        "fsdp, world size 2, 2 micro-batch(es) of 1 sequences per rank, activation checkpointing"
        in result.stderr[0]
    )
    ref, got = read_losses(tmp_path / "ref" / "loss.csv"), read_losses(tmp_path / "fsdp" / "loss.csv")
    assert sorted(got) == list(range(1, steps + 1))
    for step in got:
        assert got[step] == pytest.approx(ref[step], rel=1e-4, abs=1e-5), step
    # The FSDP checkpoint holds whole tensors (resharded by DCP) with the same names as DDP's.
    a, b = (
        load_checkpoint(tmp_path / "ref" / f"step-{steps}"),
        load_checkpoint(tmp_path / "fsdp" / f"step-{steps}"),
    )
    assert isinstance(a["model"], dict) and isinstance(b["model"], dict)
    assert a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["dcp", "vanilla"])
def test_fsdp_with_accumulation_resumes_bit_exactly(
    sample_data: tuple[Path, Path], tmp_path: Path, fmt: str
) -> None:
    steps = 16
    extra = ["--parallelism", "fsdp", "--gradient-accumulation-steps", "2"]

    def args(name: str) -> list[str]:
        return [*tiny_args(sample_data, tmp_path, name, steps=steps, fmt=fmt), *extra]

    ref = run_worker(args("ref"), world_size=2)
    assert ref.ok, ref.explain()
    first = run_worker([*args("int"), "--stop-after-steps", "7"], world_size=2)
    assert first.ok, first.explain()
    second = run_worker(args("int"), world_size=2)
    assert second.ok, second.explain()
    assert f"resumed from {tmp_path / 'int' / 'step-7'}" in second.stderr[0]
    a, b = (
        load_checkpoint(tmp_path / "ref" / f"step-{steps}"),
        load_checkpoint(tmp_path / "int" / f"step-{steps}"),
    )
    assert tensors_equal(a["model"], b["model"])
    assert tensors_equal(a["optim"], b["optim"])
    assert (tmp_path / "ref" / "loss.csv").read_bytes() == (tmp_path / "int" / "loss.csv").read_bytes()


@pytest.fixture(scope="module")
def one_rank_reference(
    sample_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[int, float]:
    """Per-step losses of an uninterrupted 1-rank DDP run of 16 steps (trained in this process)."""
    root = tmp_path_factory.mktemp("reference")
    assert main(tiny_args(sample_data, root, "ref", steps=16, fmt="dcp")) == ExitCode.OK
    return read_losses(root / "ref" / "loss.csv")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fmt", "first", "second"),
    [
        ("dcp", ("fsdp", 2), ("fsdp", 1)),
        ("dcp", ("fsdp", 1), ("fsdp", 2)),
        ("dcp", ("ddp", 2), ("fsdp", 2)),
        ("dcp", ("fsdp", 2), ("ddp", 1)),
        ("vanilla", ("fsdp", 2), ("ddp", 2)),
        ("vanilla", ("ddp", 1), ("fsdp", 2)),
    ],
    ids=lambda v: v if isinstance(v, str) else f"{v[0]}{v[1]}",
)
def test_resume_changes_world_size_and_parallelism(
    sample_data: tuple[Path, Path],
    tmp_path: Path,
    one_rank_reference: dict[int, float],
    fmt: str,
    first: tuple[str, int],
    second: tuple[str, int],
) -> None:
    """A checkpoint resumes under another world size and/or parallelism (DCP reshards; vanilla holds
    whole tensors) and the run continues on the same global batches: losses as the reference's."""
    args = tiny_args(sample_data, tmp_path, "switch", steps=16, fmt=fmt)
    r1 = run_worker([*args, "--parallelism", first[0], "--stop-after-steps", "8"], world_size=first[1])
    assert r1.ok, r1.explain()
    r2 = run_worker([*args, "--parallelism", second[0]], world_size=second[1])
    assert r2.ok, r2.explain()
    assert f"resumed from {tmp_path / 'switch' / 'step-8'}" in r2.stderr[0]
    if first[0] != second[0]:
        assert f"'parallelism': ('{first[0]}', '{second[0]}')" in r2.stderr[0]  # a note, not a refusal
    got = read_losses(tmp_path / "switch" / "loss.csv")
    assert sorted(got) == list(range(1, 17))
    for step in range(1, 17):
        assert got[step] == pytest.approx(one_rank_reference[step], rel=1e-4, abs=1e-5), step
