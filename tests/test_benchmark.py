"""The benchmark script's files: its report goes into the --output folder, and its work folder does not outlive it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT


def test_benchmark_writes_into_the_output_folder_and_removes_its_work_folder(tmp_path):
    output, work = tmp_path / "results", tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("not the benchmark's")  # a --work-dir given may hold other things: they stay
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "benchmark.py"), "--quick", "--sections", "inference",
               "--output", str(output), "--work-dir", str(work)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in output.iterdir()) == ["benchmark.json", "benchmark.md"]
    assert "inference" in json.loads((output / "benchmark.json").read_text())["results"]
    assert sorted(p.name for p in work.iterdir()) == ["mine.txt"], "the run's work folder was left behind"
