"""The distribution installs (non-editable) and works from outside the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, clinisynth, clinisynth.knowledge, clinisynth.retrieval, clinisynth.agents, clinisynth.generation
import clinisynth.evaluation, clinisynth.training
from clinisynth.knowledge import load_knowledge
kb = load_knowledge()
print(json.dumps({"file": clinisynth.knowledge.__file__, "records": len(kb.records)}))
"""


@pytest.mark.slow
def test_wheel_installs_non_editable_and_runs_outside_the_repo(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = wheels.glob("clinisynth-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=outside, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    import json

    probe = json.loads(result.stdout)
    assert probe["file"].startswith(str(target)), "imported the repository, not the installed wheel"
    assert probe["records"] > 30, "the knowledge data files were not packaged"


def test_cli_help_runs_without_importing_torch(tmp_path):
    code = "import sys; from clinisynth.cli.main import app; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
    result = subprocess.run([sys.executable, "-m", "clinisynth.cli.main", "--help"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for command in ("plan", "generate", "trace", "knowledge"):
        assert command in result.stdout
