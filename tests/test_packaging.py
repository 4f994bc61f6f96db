"""The built wheel: only ``repro_env`` at the top level (the learners install as ``repro_env.agents``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_installs_no_top_level_package_but_repro_env(tmp_path):
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources, and a stale
    # build/lib would end up in later wheels.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", ".tmp", "build", "dist", "runs",
                                                                "*.egg-info", "__pycache__", ".*_cache"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("repro_env-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"repro_env"}
    assert {"repro_env/agents/grpo.py", "repro_env/agents/train.py", "repro_env/builtin_tasks/math.yaml",
            "repro_env/integrations/trl.py", "repro_env/assets/tiny-math/model.safetensors"} <= set(names)
    # the wheel's repro_env.agents is the agents/ folder itself, not the checkout's redirect
    init = zipfile.ZipFile(wheel).read("repro_env/agents/__init__.py").decode()
    assert "__path__" not in init
