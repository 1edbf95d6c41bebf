"""Submit-time checks of a run's dataset and tokenizer paths, where the controller can see them.

The checks are the worker's own first ones (``worker.data.inputs.check_training_inputs``: paths,
Parquet footers, the names in a tokenizer directory; torch-free, imported only when a run is
created). They run after ``shared.run_rules`` accepted the paths, so only paths under the
controller's data roots are ever looked at. A ``missing`` path is refused only for a backend whose
compute nodes see this file system (``Settings.inputs_visible``, the local backend by default):
elsewhere the path may exist only on the compute nodes, and the worker's config error (exit 3)
then fails the run after its first attempt. An ``invalid`` one — it is here, and it cannot train —
is refused for every backend.
"""

from __future__ import annotations

from controller.services.errors import InvalidField
from controller.settings import Settings
from shared.paths import absolute_local
from shared.schemas import RunCreate


def check_inputs(body: RunCreate, settings: Settings) -> None:
    """Raise ``InvalidField`` (422) naming ``training.dataset`` or ``training.tokenizer_name_or_path``
    for the first problem found; nothing is read beyond file metadata."""
    from worker.data.inputs import check_training_inputs  # pyarrow: loaded only when runs are created

    # Relative paths as the worker will see them (controller/reconciler/jobspec.py:absolute_inputs).
    dataset, tokenizer = str(body.training.dataset), str(body.training.tokenizer_name_or_path)
    dataset, tokenizer = absolute_local(dataset) or dataset, absolute_local(tokenizer) or tokenizer
    visible = body.resources.scheduler in settings.inputs_visible
    for problem in check_training_inputs(dataset, tokenizer):
        if problem.kind == "missing" and not visible:
            continue
        where = (
            "" if problem.kind == "invalid" or body.resources.scheduler != "local" else " (on this machine)"
        )
        raise InvalidField(f"{problem.message}{where}", field=f"training.{problem.field}")
