"""``pyrecover export hf``: any committed checkpoint → a directory ``LlamaForCausalLM.from_pretrained`` loads,
whose logits are ours (fp32, CPU, within 1e-5), and which gives back an imported model's tensors exactly."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_helpers import (
    SEQ,
    hf_logits,
    max_abs_diff,
    our_logits,
    save_checkpoint,
    tiny_llama,
    token_ids,
)
from train_launch import free_port, run_worker, tiny_args

from shared.exit_codes import ExitCode
from worker.checkpoint.storage import load_plain
from worker.cli import main as train_main
from worker.data import load_tokenizer
from worker.hf.cli import main as export_main
from worker.hf.mapping import args_from_hf_config
from worker.hf.pretrained import load_pretrained, read_hf_config
from worker.model import Transformer, model_args

log = logging.getLogger(__name__)
HERE = Path(__file__).parent


def _vocab(tokenizer: Path) -> int:
    return len(load_tokenizer(tokenizer))


def _logits_from_plain(step_dir: Path, vocab: int, ids: torch.Tensor) -> torch.Tensor:
    """Our logits from the checkpoint as the project's own loader reads it (not the exporter's)."""
    model = Transformer(model_args("tiny", vocab_size=vocab, seq_len=SEQ))
    model.load_state_dict(load_plain(step_dir)["model"])
    return our_logits(model, ids)


def _export(step_dir: Path, out: Path, *extra: str) -> None:
    assert export_main(["hf", str(step_dir), str(out), *extra]) == 0


@pytest.mark.parametrize(
    ("fmt", "world_size"), [("dcp", 1), ("vanilla", 1), pytest.param("dcp", 2, marks=pytest.mark.slow)]
)
def test_a_trained_checkpoint_exports_with_our_logits(
    sample_data: tuple[Path, Path], tmp_path: Path, fmt: str, world_size: int
) -> None:
    args = tiny_args(sample_data, tmp_path / "ckpt", "run", steps=3, fmt=fmt)
    if world_size == 1:
        assert train_main(args) == ExitCode.OK
    else:
        result = run_worker(args, world_size=world_size)
        assert result.ok, result.explain()
    step = tmp_path / "ckpt" / "run" / "step-3"
    assert json.loads((step / "manifest.json").read_text())["world_size"] == world_size
    _export(step, tmp_path / "hf")
    vocab = _vocab(sample_data[1])
    ids = token_ids(vocab)
    diff = max_abs_diff(_logits_from_plain(step, vocab, ids), hf_logits(tmp_path / "hf", ids))
    log.warning("export %s world %d: logits max abs diff %.3g", fmt, world_size, diff)
    assert diff <= 1e-5
    # The run's tokenizer came along and encodes as the run's does.
    from transformers import AutoTokenizer

    exported = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    run_tok = load_tokenizer(sample_data[1])
    text = "Return the number of items in a container."
    assert exported(text)["input_ids"] == run_tok(text)["input_ids"]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["bos_token_id"] == run_tok.bos_token_id and config["architectures"] == ["LlamaForCausalLM"]


def _two_ranks(*argv: str) -> None:
    """Run tests/worker/hf/fsdp_checkpoint.py as 2 gloo ranks."""
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
        env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[2]), env.get("PYTHONPATH", "")])
        procs.append(
            subprocess.Popen(
                [sys.executable, str(HERE / "fsdp_checkpoint.py"), *argv],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    outs = [p.communicate(timeout=300)[0].decode(errors="replace") for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)


@pytest.mark.slow
def test_an_fsdp_sharded_checkpoint_exports_whole(sample_data: tuple[Path, Path], tmp_path: Path) -> None:
    vocab = _vocab(sample_data[1])
    _two_ranks(str(tmp_path), str(sample_data[1]), str(vocab))
    step = tmp_path / "fsdp" / "step-1"
    assert sorted(p.name for p in step.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    _export(step, tmp_path / "hf")
    reference = Transformer(model_args("tiny", vocab_size=vocab, seq_len=SEQ))
    reference.load_state_dict(torch.load(tmp_path / "reference.pt", weights_only=True))
    ids = token_ids(vocab)
    diff = max_abs_diff(our_logits(reference, ids), hf_logits(tmp_path / "hf", ids))
    log.warning("export fsdp world 2: logits max abs diff %.3g", diff)
    assert diff <= 1e-5


def _assert_same_as(out: Path, saved: dict[str, torch.Tensor], source: Path) -> None:
    from safetensors.torch import load_file

    exported = load_file(str(out / "model.safetensors"))
    assert exported.keys() == saved.keys()
    for name, tensor in saved.items():
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor), name
    mine, theirs = read_hf_config(out), read_hf_config(source)
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    keys += ("num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings")
    for key in keys:
        assert mine[key] == theirs[key], key
    assert mine["rope_parameters"]["rope_theta"] == theirs["rope_parameters"]["rope_theta"] == 50000.0


@pytest.mark.parametrize(("fmt", "dtype"), [("dcp", None), ("vanilla", None), ("dcp", "bf16")])
def test_export_of_an_import_gives_back_its_tensors_exactly(
    sample_data: tuple[Path, Path], tmp_path: Path, fmt: str, dtype: str | None
) -> None:
    from transformers import LlamaForCausalLM

    vocab = _vocab(sample_data[1])
    source = tmp_path / "x"
    saved = tiny_llama(source, vocab_size=vocab)
    if dtype == "bf16":
        LlamaForCausalLM.from_pretrained(source).to(torch.bfloat16).save_pretrained(tmp_path / "x16")
        source = tmp_path / "x16"
        saved = {k: v.to(torch.bfloat16) for k, v in saved.items()}
    args = args_from_hf_config(read_hf_config(source), vocab_size=vocab, seq_len=SEQ)
    model = Transformer(args)
    model.init_weights()
    load_pretrained(model, source)
    step = save_checkpoint(
        model, tmp_path / "ckpt", fmt=fmt, tokenizer=sample_data[1], max_position_embeddings=128
    )
    _export(step, tmp_path / "out", *(["--dtype", dtype] if dtype else []))
    _assert_same_as(tmp_path / "out", saved, source)


@pytest.mark.slow
def test_export_of_an_import_into_fsdp_shards_gives_back_its_tensors(
    sample_data: tuple[Path, Path], tmp_path: Path
) -> None:
    vocab = _vocab(sample_data[1])
    saved = tiny_llama(tmp_path / "x", vocab_size=vocab)
    _two_ranks(str(tmp_path), str(sample_data[1]), str(vocab), str(tmp_path / "x"))
    _export(tmp_path / "fsdp" / "step-1", tmp_path / "out")
    from safetensors.torch import load_file

    exported = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert exported.keys() == saved.keys()
    assert all(exported[k].dtype == v.dtype and torch.equal(exported[k], v) for k, v in saved.items())


# ------------------------------------------------------------------ what is refused, and what is left


@pytest.fixture
def committed(sample_data: tuple[Path, Path], tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = Transformer(model_args("tiny", vocab_size=_vocab(sample_data[1]), seq_len=SEQ))
    model.init_weights()
    return save_checkpoint(model, tmp_path / "ckpt", fmt="dcp", tokenizer=sample_data[1], step=4)


def _refused(args: list[str], capsys: pytest.CaptureFixture[str], out: Path) -> str:
    before = sorted(p.name for p in out.parent.iterdir())
    assert export_main(args) == 1
    assert sorted(p.name for p in out.parent.iterdir()) == before  # nothing written, no leftovers
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_only_a_committed_intact_checkpoint_is_exported(
    committed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    err = _refused(["hf", str(committed.parent), str(out)], capsys, out)
    assert "is a run's checkpoint directory" in err and str(committed) in err
    half = committed.with_name(".tmp-step-5-abc")
    half.mkdir()
    for f in committed.glob("*.distcp"):
        (half / f.name).write_bytes(f.read_bytes())
    err = _refused(["hf", str(half), str(out)], capsys, out)
    assert err.endswith("no manifest.json (not a committed checkpoint)")
    shard = next(committed.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    err = _refused(["hf", str(committed), str(out)], capsys, out)
    assert "does not match its manifest.json" in err and "checksum" in err


def test_an_existing_export_or_a_missing_tokenizer_is_refused(
    committed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    err = _refused(["hf", str(committed), str(out), "--tokenizer", str(tmp_path / "nope")], capsys, out)
    assert "tokenizer" in err and "does not exist" in err
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = _refused(["hf", str(committed), str(out)], capsys, out)
    assert "exists and is not empty" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()  # an empty directory is filled
    _export(committed, out)
    assert (out / "model.safetensors").is_file()


def test_a_large_model_is_split_into_shards_with_an_index(
    committed: Path, sample_data: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _export(committed, out, "--max-shard-size", "1MB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted({*index["weight_map"].values()})
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    assert not (out / "model.safetensors").exists()
    vocab = _vocab(sample_data[1])
    ids = token_ids(vocab)
    assert max_abs_diff(_logits_from_plain(committed, vocab, ids), hf_logits(out, ids)) <= 1e-5
