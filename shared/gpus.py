"""Memory of common training GPUs, for the memory plan (``shared.memory_plan``).

Values are GiB as the driver reports the device's total (``nvidia-smi`` / ``rocm-smi``), not the
marketing "GB". A run names its GPU with ``resources.gpu_type`` (a key below, any case) or gives
``resources.gpu_memory`` in GiB for anything else.
"""

from __future__ import annotations

GPU_MEMORY_GIB: dict[str, float] = {
    "v100-16gb": 16.0,
    "v100-32gb": 32.0,
    "a10": 22.5,
    "l4": 22.5,
    "rtx-4090": 24.0,
    "a100-40gb": 40.0,
    "l40s": 45.0,
    "a100-80gb": 80.0,
    "h100-80gb": 79.6,
    "h100-94gb": 93.6,
    "gh200-96gb": 95.0,
    "h200": 140.4,
    "gh200-144gb": 140.4,
    "b200": 179.1,
    "mi250x": 64.0,
    "mi300x": 192.0,
}
"""GPU name → memory in GiB (MI250X: one of its two dies, which is what one rank sees)."""

USABLE_FRACTION = 0.9
"""Share of a GPU's memory a plan may fill: the rest goes to the CUDA context, NCCL's buffers and
the caching allocator's fragmentation, none of which the plan counts."""


def gpu_memory_gib(gpu_type: str) -> float:
    """The table's GiB for ``gpu_type`` (case-insensitive); ValueError naming the known ones."""
    key = gpu_type.strip().lower()
    if key not in GPU_MEMORY_GIB:
        known = ", ".join(GPU_MEMORY_GIB)
        raise ValueError(f"unknown GPU {gpu_type!r}; known: {known} (or give resources.gpu_memory in GiB)")
    return GPU_MEMORY_GIB[key]
