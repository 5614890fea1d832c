"""The package installs as a wheel: a bundle folder copied anywhere runs with the installed package alone.

The wheel is built offline from a copy of the sources (with this environment's build backend), installed into a
throwaway folder, and the bundle is run from a copy of ``bundle/`` outside the repository, with ``PYTHONPATH``
naming that folder and not the repository: nothing may be read beside the package's own source.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TINY_OVERRIDES

# the sources a wheel is built from (pyproject.toml names README.md as the long description)
_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "monai_vqbrain")


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """A folder holding monai_vqbrain installed from a freshly built wheel (``pip install --target``)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in _SOURCES:
        copy = shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copy
        copy(REPO_ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(work / "dist"),
          str(source)])
    (wheel,) = (work / "dist").glob("monai_vqbrain-*.whl")
    target = work / "site"
    _run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)])
    return target


def test_a_wheel_runs_the_bundle_copied_outside_the_repository(installed_wheel, demo_root, tmp_path):
    bundle = tmp_path / "mybundle"
    shutil.copytree(REPO_ROOT / "bundle" / "configs", bundle / "configs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed_wheel), "MONAI_VQBRAIN_TRACEBACK": ""}
    # the installed copy is the one imported (an editable install of the repository may sit in site-packages too)
    imported = _run([sys.executable, "-c", "import monai_vqbrain; print(monai_vqbrain.__file__)"], cwd=elsewhere,
                    env=env).stdout.strip()
    assert Path(imported).is_relative_to(installed_wheel), imported

    configs = str(bundle / "configs" / "train.json")
    tiny = [f"--{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in {**TINY_OVERRIDES, "max_epochs": 1, "max_items": 8, "amp": "false"}.items()]
    command = [sys.executable, "-m", "monai.bundle", "run"]
    help_text = _run([*command, "help", "--config_file", configs, *tiny], cwd=elsewhere, env=env).stdout
    assert f"  --ckpt_dir {bundle / 'models'}" in help_text.splitlines(), help_text[-2000:]

    _run([*command, "training", "--config_file", configs, "--dataset_dir", str(demo_root), *tiny], cwd=elsewhere,
         env=env)
    # the outputs go below the bundle the configs came from; nothing below the working directory
    assert {p.name for p in (bundle / "models").iterdir()} >= {"model.pt", "model.json", "last.pt"}
    assert list(elsewhere.iterdir()) == []
