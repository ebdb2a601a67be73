"""The suite's result file: one JSON document per invocation, machine-readable, with what
it takes to reproduce and compare (commit, dirty flag, Python, cores and pinning, sizes),
every run's figures per target and case, and their medians."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .process import git_commit
from .scenarios import Sizes
from .stats import median_of

SCHEMA = 1


def host_meta(sizes: Sizes, runs: int, quick: bool, scenarios: list[str],
              pinning: dict[str, Any]) -> dict[str, Any]:
    commit, dirty = git_commit()
    return {
        "timestamp": time.strftime("%Y%m%d-%H%M%S"),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "pinning": pinning,
        "runs": runs,
        "quick": quick,
        "scenarios": scenarios,
        "sizes": asdict(sizes),
    }


def case_entry(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A case's runs plus their medians (failures and losses summed)."""
    return {"runs": runs, "median": median_of(runs)}


def document(meta: dict[str, Any], targets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    problems = [f"{name}: {p}" for name, t in targets.items() for p in t.get("problems", [])]
    return {"schema": SCHEMA, "meta": meta, "targets": targets, "problems": problems}


def write(doc: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{doc['meta']['timestamp']}.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(Path(path).read_text())
    if "targets" not in doc:
        raise ValueError(f"{path} is not a benchmark suite result (no 'targets')")
    return doc


def medians(doc: dict[str, Any]) -> dict[str, float]:
    """Every median figure of a document as `target/case.figure -> value`."""
    flat: dict[str, float] = {}
    for target, entry in doc["targets"].items():
        for case, data in entry.get("cases", {}).items():
            for figure, value in data.get("median", {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    flat[f"{target}/{case}.{figure}"] = float(value)
    return flat
