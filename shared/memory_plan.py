"""The memory plan: per-GPU bytes a run needs, estimated from the model's shape (torch-free).

``plan_memory`` counts, for one rank, what the worker's training step keeps alive
(``worker/loop.py``, ``worker/parallel.py``, ``worker/model.py``):

- **parameters, gradients, optimizer state**: N parameters (``shared.model_shapes``) × the master
  dtype's bytes, × 2 for AdamW's two moments; divided by the world size under FSDP;
- **buffers** the parallelism adds: DDP's gradient buckets (a second copy of the gradients); the
  bf16 weight copies autocast caches for one forward/backward; FSDP's gathered parameters (the
  root's embedding and output head for the whole step, two blocks at a time) and, with gradient
  accumulation, the whole model's unsharded gradients kept between micro-batches;
- **activations** of one micro-batch, tensor by tensor as autograd saves them for our block
  (norm inputs and outputs, q/k/v, the attention output, SwiGLU's four hidden tensors, the
  log-softmax of the logits), or with activation checkpointing only each block's input;
- **transient** memory at the peak: the backward of the log-softmax (two more logits-sized
  tensors), a block's recomputation under activation checkpointing, AdamW's temporaries.

The peak is the largest of three moments: the start of the last micro-batch's backward (all
activations alive), the end of the backward under FSDP (the root's gathered parameters, its
unsharded gradients and the reduce-scatter buffer), and the optimizer step. The figures were
checked against tensor-level peaks measured on a CPU (``bench/memory_plan.py``); CUDA's caching
allocator and the CUDA context come on top, hence ``shared.gpus.USABLE_FRACTION``.

The vocabulary is the preset's unless the caller knows the tokenizer's (the controller does not
load tokenizers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from shared.gpus import USABLE_FRACTION, gpu_memory_gib
from shared.model_shapes import PRESETS, TransformerModelArgs, model_args
from shared.schemas.spec import RunCreate
from shared.training import TrainingFields

GIB = 1024**3
_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8}


@dataclass(frozen=True, kw_only=True)
class PlanInputs:
    """What the estimate depends on (one rank)."""

    shape: TransformerModelArgs
    """The model, with the vocabulary and the sequence length it trains with."""
    micro_batch: int
    """Sequences per micro-batch on one rank: batch_size / (world size × accumulation)."""
    world_size: int
    accumulation: int
    parallelism: str
    activation_checkpointing: bool
    model_dtype: str
    mixed_precision: bool
    on_gpu: bool = True
    """False: the worker's CPU policy (mixed precision trains in plain fp32)."""
    fused_optimizer: bool = False

    @classmethod
    def from_training(
        cls, training: TrainingFields, *, world_size: int, on_gpu: bool = True, vocab_size: int | None = None
    ) -> PlanInputs:
        preset = PRESETS[training.model_preset]
        shape = model_args(
            training.model_preset,
            vocab_size=vocab_size or preset.vocab_size,
            seq_len=training.sequence_length,
        )
        return cls(
            shape=shape,
            micro_batch=max(training.batch_size // (world_size * training.gradient_accumulation_steps), 1),
            world_size=world_size,
            accumulation=training.gradient_accumulation_steps,
            parallelism=training.parallelism,
            activation_checkpointing=training.activation_checkpointing,
            model_dtype=training.model_dtype,
            mixed_precision=training.mixed_precision,
            on_gpu=on_gpu,
            fused_optimizer=training.fused_optimizer,
        )


@dataclass(frozen=True, kw_only=True)
class MemoryPlan:
    """Bytes per rank. ``peak`` is what must fit; the other fields explain it."""

    inputs: PlanInputs
    parameters: int
    gradients: int
    optimizer: int
    buffers: int
    """Parallelism's extra copies at the activation peak (see the module docstring)."""
    activations: int
    """Saved for the backward pass, one micro-batch, with the run's activation checkpointing."""
    activations_checkpointed: int
    activations_full: int
    transient: int
    """Short-lived memory at the activation peak (log-softmax backward, a block's recomputation)."""
    phases: dict[str, int]
    """Peak candidates: 'forward/backward', 'end of backward' (FSDP), 'optimizer step'."""

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda k: self.phases[k])


def _dtypes(p: PlanInputs) -> tuple[int, int, int, int, bool]:
    """(master, matmul activation, residual stream, gradient reduction) bytes, and whether autocast
    caches weight copies: the worker's ``resolve_precision`` + ``mixed_precision_policy``."""
    own = _BYTES[p.model_dtype]
    if not p.mixed_precision:
        return own, own, own, own, False
    if own >= 4 or not p.on_gpu:
        master = 8 if p.model_dtype == "fp64" else 4
        return master, master, master, master, False
    if p.parallelism == "fsdp":
        return 4, own, own, 4, False  # FSDP gathers bf16 parameters: the residual stream is bf16
    return 4, own, 4, 4, True  # autocast: bf16 matmuls, fp32 residual stream (x + bf16 → fp32)


def _activations(p: PlanInputs, *, checkpointed: bool) -> tuple[int, int]:
    """(saved bytes, transient bytes at the backward's start) of one micro-batch."""
    a = p.shape
    _, c, r, _, _ = _dtypes(p)
    tokens = p.micro_batch * a.seq_len
    d, kv, f, vocab = a.dim, a.kv_heads * a.head_dim, a.ffn_hidden_dim, a.vocab_size
    # One norm: its input in fp32, the normalised tensor (saved by the weight multiply), and the
    # projections' input in the matmul dtype.
    norm = (4 + r + c) * d
    # Two norms; q, the attention output and its contiguous copy for wo; k and v; SwiGLU's w1 and
    # w3 outputs, silu's output and the product; the attention's log-sum-exp (fp32 per head).
    block = tokens * (2 * norm + 3 * c * d + 2 * c * kv + 4 * c * f + 4 * a.n_heads)
    # The final norm and the log-softmax of the fp32 logits (the logits themselves are not kept).
    tail = tokens * (norm + 4 * vocab)
    ids = p.accumulation * tokens * 8 * 2  # this rank's share of inputs and labels (int64)
    logits_backward = tokens * 8 * vocab  # the incoming gradient and the logits' gradient (fp32)
    block_backward = tokens * (3 * c * f + 2 * r * d)  # gradients of a block's widest tensors
    if checkpointed:
        saved = a.n_layers * tokens * r * d + tail + ids
        return saved, max(logits_backward, block + block_backward)
    return a.n_layers * block + tail + ids, max(logits_backward, block_backward)


def _adam_temporary(p: PlanInputs, state_bytes: int, master: int) -> int:
    """AdamW's scratch memory in its step: on a GPU the foreach implementation computes sqrt(v) for
    every tensor at once (one more copy of the local state); fused AdamW needs none; on a CPU AdamW
    loops over the tensors, holding two temporaries the size of the largest one."""
    if p.fused_optimizer and p.on_gpu:
        return 0
    if p.on_gpu:
        return state_bytes
    a = p.shape
    largest = max(a.vocab_size * a.dim, a.dim * a.ffn_hidden_dim, a.dim * a.dim)
    return 2 * largest * master // (p.world_size if p.parallelism == "fsdp" else 1)


def plan_memory(p: PlanInputs) -> MemoryPlan:
    """Per-rank memory of one training step under ``p`` (see the module docstring for what counts)."""
    a = p.shape
    master, c, _, reduce, autocast = _dtypes(p)
    n = a.num_parameters
    fsdp = p.parallelism == "fsdp"
    shards = p.world_size if fsdp else 1
    params, grads, optim = n * master // shards, n * master // shards, 2 * n * master // shards
    root = 2 * a.vocab_size * a.dim + a.dim  # the root unit: embedding, output head, final norm
    buckets = n * master if not fsdp and p.world_size > 1 else 0  # DDP's gradient buckets
    weight_cache = (n - a.vocab_size * a.dim) * c if autocast else 0  # bf16 copies of the matmul weights
    gathered = (root + 2 * a.block_parameters) * c if fsdp else 0  # the root all step, two blocks
    unsharded = n * reduce if fsdp and p.accumulation > 1 else 0  # kept between micro-batches
    buffers = buckets + weight_cache + gathered + unsharded
    full, full_transient = _activations(p, checkpointed=False)
    ckpt, ckpt_transient = _activations(p, checkpointed=True)
    saved, transient = (ckpt, ckpt_transient) if p.activation_checkpointing else (full, full_transient)
    # DDP accumulates into the full gradients from the first micro-batch on; FSDP's sharded ones
    # appear only with the last reduce-scatter (the loop frees gradients after every step).
    live_grads = grads if p.accumulation > 1 and not fsdp else 0
    adam_temporary = _adam_temporary(p, n * master // shards, master)
    phases = {
        "forward/backward": params + optim + buffers + live_grads + saved + transient,
        "optimizer step": params + grads + optim + buckets + adam_temporary,
    }
    if fsdp:
        # The root's unit finishes last: its gathered parameters, its unsharded gradients and the
        # reduce-scatter input, next to every block's sharded gradients.
        phases["end of backward"] = params + optim + grads + root * (2 * c + reduce)
    return MemoryPlan(
        inputs=p,
        parameters=params,
        gradients=grads,
        optimizer=optim,
        buffers=buffers,
        activations=saved,
        activations_checkpointed=ckpt,
        activations_full=full,
        transient=transient,
        phases=phases,
    )


# ---------------------------------------------------------------- a run against its GPU


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """A run's plan against the memory of the GPU it names."""

    plan: MemoryPlan
    gpu: str
    gpu_bytes: int
    ranks_per_gpu: int
    suggestions: list[tuple[str, int]]
    """Changes that make the run fit, with their peak: ("parallelism: fsdp", bytes), ...; empty when
    it fits or when nothing short of more or larger GPUs would."""

    @property
    def needed(self) -> int:
        return self.plan.peak * self.ranks_per_gpu

    @property
    def usable(self) -> int:
        return int(self.gpu_bytes * USABLE_FRACTION)

    @property
    def fits(self) -> bool:
        return self.needed <= self.usable

    def refusal(self) -> str:
        """What the 422 says: the need, the GPU, and what to change."""
        plan = self.plan
        need = (
            f"the run needs about {gib(self.needed)} per GPU at the {plan.peak_phase} peak (parameters "
            f"{gib(plan.parameters)}, gradients {gib(plan.gradients)}, optimizer {gib(plan.optimizer)}, "
            f"activations {gib(plan.activations)} per micro-batch of {plan.inputs.micro_batch}, buffers "
            f"{gib(plan.buffers)}) but one {self.gpu} offers {gib(self.usable)} usable of "
            f"{gib(self.gpu_bytes)}"
        )
        if self.suggestions:
            options = "; or ".join(f"{change} (about {gib(peak)})" for change, peak in self.suggestions)
            return f"{need}: set {options}"
        return f"{need}, and no setting change fits it: use more GPUs (a larger world size) or larger GPUs"


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f} GiB"


def _alternatives(p: PlanInputs, local_batch: int) -> list[list[tuple[str, PlanInputs]]]:
    """Groups of changes, each from the least to the most disruptive: FSDP; activation
    checkpointing; a smaller micro-batch; all of them together."""
    splits = [k for k in range(p.accumulation + 1, local_batch + 1) if local_batch % k == 0]

    def micro(q: PlanInputs, k: int) -> PlanInputs:
        return dataclasses.replace(q, accumulation=k, micro_batch=local_batch // k)

    groups: list[list[tuple[str, PlanInputs]]] = []
    if p.parallelism != "fsdp" and p.world_size > 1:
        groups.append([("training.parallelism: fsdp", dataclasses.replace(p, parallelism="fsdp"))])
    if not p.activation_checkpointing:
        groups.append(
            [
                (
                    "training.activation_checkpointing: true",
                    dataclasses.replace(p, activation_checkpointing=True),
                )
            ]
        )
    groups.append(
        [
            (f"training.gradient_accumulation_steps: {k} (micro-batches of {local_batch // k})", micro(p, k))
            for k in splits
        ]
    )
    combined, names = p, []
    if p.parallelism != "fsdp" and p.world_size > 1:
        combined, names = dataclasses.replace(combined, parallelism="fsdp"), ["parallelism: fsdp"]
    if not p.activation_checkpointing:
        combined = dataclasses.replace(combined, activation_checkpointing=True)
        names.append("activation_checkpointing: true")
    if names:
        label = "training." + " + ".join(names)
        groups.append(
            ([(label, combined)] if len(names) > 1 else [])
            + [(f"{label} + gradient_accumulation_steps: {k}", micro(combined, k)) for k in splits]
        )
    return groups


def check_run(run: RunCreate, *, vocab_size: int | None = None) -> Verdict | None:
    """The run's plan against the GPU it names; None for a run that names no GPU (CPU runs and runs
    of unknown hardware are not checked)."""
    res = run.resources
    if res.gpu_memory is not None:
        gpu, gpu_bytes = f"GPU of {res.gpu_memory:g} GiB", int(res.gpu_memory * GIB)
    elif res.gpu_type is not None:
        gpu, gpu_bytes = res.gpu_type, int(gpu_memory_gib(res.gpu_type) * GIB)
    else:
        return None
    world = res.world_size
    inputs = PlanInputs.from_training(run.training, world_size=world, vocab_size=vocab_size)
    ranks_per_gpu = max(-(-res.ntasks_per_node // max(res.gpus_per_node, 1)), 1)
    verdict = Verdict(
        plan=plan_memory(inputs), gpu=gpu, gpu_bytes=gpu_bytes, ranks_per_gpu=ranks_per_gpu, suggestions=[]
    )
    if verdict.fits:
        return verdict
    fitting: list[tuple[str, int]] = []
    for group in _alternatives(inputs, run.training.batch_size // world):
        for label, candidate in group:
            peak = plan_memory(candidate).peak * ranks_per_gpu
            if peak <= verdict.usable:
                fitting.append((label, peak))  # the group's first (least disruptive) fit
                break
    return dataclasses.replace(verdict, suggestions=fitting[:3])
