"""``pyrecover demo``: the whole loop on one machine in a few minutes.

1. Prepare the offline sample corpus and tokenizer (kept between demos, like ``pyrecover data prepare``).
2. Measure this machine's start-up and step time with a short standalone worker, and size the run
   so it needs at least three walltime windows (``plan_steps``).
3. Start the controller in this process, exactly as ``pyrecover serve`` would run it: SQLite in the
   controller's data dir (``$PYRECOVER_DATA_DIR``, default ``./var``), the local scheduler, the
   dashboard. Submit one run whose attempts each get ``window_s`` seconds of walltime (45 s, or
   longer where a worker takes so long to start that 45 s would leave too little time to train).
4. Show progress live and one line per automatic resumption; end with a summary (attempts and end
   reasons, goodput, final loss, dashboard URL). Exit status 0 only if the run COMPLETED.

Ctrl-C (or SIGTERM) cancels the run, waits for its worker to stop, and stops the controller; as
a last resort it kills any worker this demo started, so no process outlives the demo.

Torch is never imported here: the worker always runs in a subprocess.

Modules: ``plan`` (calibration and sizing), ``watch`` (live view and summary), ``run`` (the
controller in this process and the demo's steps).
"""

from controller.demo.plan import (
    DEMO_MARGIN_S,
    WINDOW_S,
    WORKER_ENV,
    Calibration,
    auto_window,
    calibrate,
    plan_steps,
    training_body,
    useful_seconds,
    worker_stop_overhead,
)
from controller.demo.run import DemoController, DemoOptions, demo_settings, pick_port, run_demo
from controller.demo.watch import Watcher, attempt_status, summary_tables

__all__ = [
    "DEMO_MARGIN_S",
    "WINDOW_S",
    "WORKER_ENV",
    "Calibration",
    "DemoController",
    "DemoOptions",
    "Watcher",
    "attempt_status",
    "auto_window",
    "calibrate",
    "demo_settings",
    "pick_port",
    "plan_steps",
    "run_demo",
    "summary_tables",
    "training_body",
    "useful_seconds",
    "worker_stop_overhead",
]
