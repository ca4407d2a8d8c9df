"""End-to-end tests drive `gen` as a user would, from a scratch working directory."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in tmp_path, so checkpoints/ and lightning_logs/ land there and not in the repo.

    sys.argv is set to a bare `gen`, as when a user types the command (pytest's own arguments
    would otherwise make LightningCLI warn that it got both argv and args).
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["gen"])
    return tmp_path


def read_metrics(workdir: Path, name: str) -> dict:
    """The newest metrics.json of experiment `name`."""
    paths = sorted(workdir.glob(f"lightning_logs/{name}/version_*/metrics.json"), key=lambda p: p.stat().st_mtime)
    assert paths, f"no metrics.json under {workdir}/lightning_logs/{name}"
    return json.loads(paths[-1].read_text())
