"""The controller app must not pull in torch (login nodes have none; start-up stays fast)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_building_the_app_imports_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from controller.api import create_app; from controller.settings import Settings; "
        "import controller.services, controller.metrics, controller.state_machine; "
        "create_app(Settings(data_dir=sys.argv[1], run_reconciler=False)); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False", out.stderr
