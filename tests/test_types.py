"""The type check is part of the suite: mypy, as configured in pyproject.toml ([tool.mypy]:
`actors/` and `broker/` strict, `gateways/` with mypy's default checks), finds nothing.

Run alone: `python -m mypy` from the repository root (its cache, `.mypy_cache`, makes a
second run take about a second).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A cold run (no cache) takes ~4 s, a warm one under 1 s; far past that, something is wrong.
TIMEOUT_SECONDS = 300


def test_mypy_finds_no_type_errors_in_actors_broker_and_gateways() -> None:
    # The packages to check come from `files` in [tool.mypy]: one place says what is checked.
    result = subprocess.run(
        [sys.executable, "-m", "mypy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, f"mypy found errors:\n{result.stdout}{result.stderr}"
