"""The reconciler: the background loop that submits, watches and resubmits attempts.

* ``decide``: pure functions: an attempt's end reason and what happens to its run next.
* ``ending``: the end of an attempt and the run's next step (and ``TickContext``).
* ``store``: every query and write on the database the reconciler makes (the caller commits).
* ``jobspec``: what one attempt runs (the ``JobSpec`` for a backend) and the run's token file.
* ``submission``: recording the intent, calling the scheduler, recovering interrupted submissions.
* ``runlock``: per-run locks, so several controllers on one PostgreSQL never act on a run twice.
* ``tick``: one pass over the database (submit due runs, poll live attempts, apply decisions).
* ``loop``: the ``Reconciler`` thread started by the app's lifespan (``start`` / ``wake`` / ``stop``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.reconciler.loop import Reconciler

__all__ = ["Reconciler"]


def __getattr__(name: str) -> Any:
    # Lazy, so that ``decide`` (pure) imports without pulling in the database layer.
    if name == "Reconciler":
        from controller.reconciler.loop import Reconciler

        return Reconciler
    raise AttributeError(name)
