"""``training.init_from_hf``: a local Llama checkpoint becomes our model exactly, only at a fresh start."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from hf_helpers import SEQ, hf_logits, max_abs_diff, our_logits, tiny_llama, token_ids

from shared.exit_codes import ExitCode
from worker.checkpoint.storage import load_plain
from worker.cli import main
from worker.config import ConfigError
from worker.hf.mapping import args_from_hf_config, from_hf_name
from worker.hf.pretrained import load_pretrained, read_hf_config, weight_files
from worker.model import Transformer

log = logging.getLogger(__name__)


def _imported(directory: Path, *, vocab_size: int, seq_len: int = SEQ) -> Transformer:
    args = args_from_hf_config(read_hf_config(directory), vocab_size=vocab_size, seq_len=seq_len)
    model = Transformer(args)
    model.init_weights()
    assert load_pretrained(model, directory) == len(model.state_dict())
    return model


@pytest.mark.parametrize("tied", [False, True])
def test_imported_model_computes_the_llama_logits(tmp_path: Path, tied: bool) -> None:
    saved = tiny_llama(tmp_path, vocab_size=300, tie_word_embeddings=tied)
    model = _imported(tmp_path, vocab_size=300)
    ids = token_ids(300)
    diff = max_abs_diff(our_logits(model, ids), hf_logits(tmp_path, ids))
    log.warning("init_from_hf logits, tied=%s: max abs diff %.3g", tied, diff)
    assert diff <= 1e-5
    ours = model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(ours[from_hf_name(name)], tensor), name
    if tied:  # our head is its own tensor, starting as a copy of the embedding
        assert torch.equal(ours["output.weight"], ours["tok_embeddings.weight"])
        assert ours["output.weight"].data_ptr() != ours["tok_embeddings.weight"].data_ptr()


def test_weights_are_cast_into_the_models_dtype(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    tiny_llama(tmp_path / "fp32", vocab_size=300)
    LlamaForCausalLM.from_pretrained(tmp_path / "fp32").to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model = _imported(tmp_path / "bf16", vocab_size=300)
    assert model.tok_embeddings.weight.dtype == torch.float32
    bf16 = LlamaForCausalLM.from_pretrained(tmp_path / "bf16").state_dict()["model.embed_tokens.weight"]
    assert torch.equal(model.tok_embeddings.weight, bf16.float())


def test_only_safetensors_inside_the_directory_are_read(tmp_path: Path) -> None:
    tiny_llama(tmp_path, vocab_size=300)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="pickle"):
        weight_files(tmp_path)
    index = {"weight_map": {"model.embed_tokens.weight": "../elsewhere/model.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match=r"not a \.safetensors file in the directory"):
        weight_files(tmp_path)


def test_weights_the_config_does_not_describe_are_refused(tmp_path: Path) -> None:
    tiny_llama(tmp_path / "deep", vocab_size=300, num_hidden_layers=3)
    shutil.copy(tmp_path / "deep" / "model.safetensors", tmp_path / "model.safetensors")
    tiny_llama(tmp_path / "shallow", vocab_size=300)
    shutil.copy(tmp_path / "shallow" / "config.json", tmp_path / "config.json")
    args = args_from_hf_config(read_hf_config(tmp_path), vocab_size=300, seq_len=SEQ)
    with pytest.raises(ConfigError, match=r"does not describe: layers\.2\."):
        load_pretrained(Transformer(args), tmp_path)


# ------------------------------------------------------------------ through the worker


def _train_args(sample_data: tuple[Path, Path], ckpt: Path, name: str, hf: Path, *extra: str) -> list[str]:
    parquet, tokenizer = sample_data
    return [
        "--dataset", str(parquet), "--tokenizer-name-or-path", str(tokenizer), "--init-from-hf", str(hf),
        "--sequence-length", str(SEQ), "--batch-size", "2", "--model-dtype", "fp32", "--seed", "3",
        "--learning-rate", "1e-6", "--lr-warmup-steps", "0", "--training-steps", "2",
        "--checkpoint-frequency", "-1", "--checkpoint-dir", str(ckpt), "--experiment-name", name,
        "--no-use-torch-distributed-ckpt", *extra,
    ]  # fmt: skip


def _weights(step_dir: Path) -> dict[str, torch.Tensor]:
    return load_plain(step_dir)["model"]


def _vocab(sample_data: tuple[Path, Path]) -> int:
    from worker.data import load_tokenizer

    return len(load_tokenizer(sample_data[1]))


def test_a_fresh_start_begins_from_the_checkpoint_and_a_resume_does_not_reload_it(
    sample_data: tuple[Path, Path], tmp_path: Path
) -> None:
    hf = tmp_path / "hf"
    saved = tiny_llama(hf, vocab_size=_vocab(sample_data))
    ckpt = tmp_path / "ckpt"
    # One attempt, two steps at a learning rate of 1e-6: the weights stay within ~2e-6 of the import.
    assert main(_train_args(sample_data, ckpt, "whole", hf)) == ExitCode.OK
    whole = _weights(ckpt / "whole" / "step-2")
    assert max(max_abs_diff(whole[from_hf_name(k)], v) for k, v in saved.items()) < 1e-5
    manifest = json.loads((ckpt / "whole" / "step-2" / "manifest.json").read_text())
    assert manifest["config"]["init_from_hf"] == str(hf)
    assert manifest["config"]["model"]["max_position_embeddings"] == 128

    # Two attempts: the second resumes from step 1 and must not load the Hugging Face weights again
    # (that would undo step 1): it ends bit-exactly where the single attempt did.
    assert main(_train_args(sample_data, ckpt, "split", hf, "--stop-after-steps", "1")) == ExitCode.OK
    assert (ckpt / "split" / "step-1").is_dir()
    assert main(_train_args(sample_data, ckpt, "split", hf)) == ExitCode.OK
    split = _weights(ckpt / "split" / "step-2")
    assert all(torch.equal(split[k], whole[k]) for k in whole)

    # An attempt that finds nothing committed (its predecessor died before its first checkpoint)
    # is a fresh start: it loads the Hugging Face weights again and trains what the first one did.
    for path in (ckpt / "split").iterdir():
        if path.name.startswith("step-") or path.name == "loss.csv":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert main(_train_args(sample_data, ckpt, "split", hf)) == ExitCode.OK
    again = _weights(ckpt / "split" / "step-2")
    assert all(torch.equal(again[k], whole[k]) for k in whole)


def _edit_config(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("vocab", "vocab_size: the checkpoint has 300 token embeddings, the run's tokenizer has"),
        (
            "context",
            "max_position_embeddings: the run's sequence_length 32 is beyond the model's context of 16",
        ),
        ("mistral", "model_type: only Llama checkpoints ('llama') can be imported (got 'mistral')"),
        ("heads", "num_key_value_heads: must divide num_attention_heads=4 (got 3)"),
        ("missing", "no config.json (not a Hugging Face checkpoint directory)"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_a_config_error(
    sample_data: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    setup: str,
    message: str,
) -> None:
    hf = tmp_path / "hf"
    vocab = _vocab(sample_data)
    if setup == "vocab":
        tiny_llama(hf, vocab_size=300)
    elif setup == "missing":
        hf.mkdir()
    else:
        tiny_llama(hf, vocab_size=vocab)
        _edit_config(
            hf,
            **{
                "context": {"max_position_embeddings": 16},
                "mistral": {"model_type": "mistral"},
                "heads": {"num_key_value_heads": 3},
            }[setup],
        )
    rc = main(_train_args(sample_data, tmp_path / "ckpt", "bad", hf))
    assert rc == ExitCode.CONFIG_ERROR
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"pyrecover train: error: init_from_hf: {hf}: "), err
    assert message in err
    assert not (tmp_path / "ckpt" / "bad").exists() or not any((tmp_path / "ckpt" / "bad").glob("step-*"))
