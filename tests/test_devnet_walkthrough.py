"""The README's devnet walkthrough, run as a new user would: every command exactly as `pouw devnet up --keep` prints it.

Needs the nuclei images of the stardist wheel (`pip install --no-deps
stardist==0.9.2`, as the README and .ci/run do); skipped with that reason
without them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tests.test_devnet import GUIDE_END, get_descendants, is_alive, wait_for_line

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("stardist") is None,
                       reason="the nuclei example needs the stardist wheel: pip install --no-deps stardist==0.9.2"),
]


def as_argv(command: str) -> list[str]:
    """A printed command, run with this interpreter (`pouw` and `python` need not be on PATH)."""
    args = shlex.split(command)
    if args[0] == "pouw":
        return [sys.executable, "-m", "pouw.cli", *args[1:]]
    if args[0] == "python":
        return [sys.executable, *args[1:]]
    raise AssertionError(f"unexpected command {command}")


def run_printed(command: str, cwd, *extra: str) -> str:
    result = subprocess.run(as_argv(command) + list(extra), cwd=cwd, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_a_new_user_gets_their_own_dataset_mined(tmp_path):
    cmd = [sys.executable, "-m", "pouw.cli", "devnet", "up", "--keep", "--nodes", "2", "--miners", "1",
           "--dir", str(tmp_path / "net")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    lines: list[str] = []
    children: dict[int, int] = {}
    try:
        wait_for_line(proc, lines, GUIDE_END, 180)
        children = get_descendants(proc.pid)
        printed = [line.strip() for line in lines if line.startswith("  ")]
        by_start = {name: next(c for c in printed if c.startswith(start)) for name, start in (
            ("dataset", "python "), ("submit", "pouw task submit "), ("status", "pouw task status "),
            ("results", "pouw task results "))}

        run_printed(by_start["dataset"], tmp_path)
        submitted = json.loads(run_printed(by_start["submit"], tmp_path, "--json").strip().splitlines()[-1])
        task_id = submitted["task_id"]
        assert submitted["train"]["cases"] == 48 and submitted["test"]["cases"] == 16

        status_cmd = by_start["status"].replace("TASK_ID", task_id)
        deadline = time.time() + 400
        while True:
            status = json.loads(run_printed(status_cmd, tmp_path, "--json").strip().splitlines()[-1])
            if status["status"] == "mined" or time.time() > deadline:
                break
            time.sleep(5)
        assert status["status"] == "mined", status
        assert status["result"]["mode"] == 0

        results = json.loads(run_printed(by_start["results"].replace("TASK_ID", task_id), tmp_path, "--json").strip().splitlines()[-1])
        assert results["test_dice_ppm"] == status["result"]["dice_ppm"]  # the user's own re-scoring agrees with the chain
        assert results["test_dice_ppm"] > 500_000, "the nuclei model learned nothing"
        assert (tmp_path / "nuclei-results" / "dice.png").exists()
        assert len(list((tmp_path / "nuclei-results" / "overlays").glob("*.png"))) == 8

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(90) == 130
        time.sleep(1)
        assert not [pid for pid, started in children.items() if is_alive(pid, started)]
    finally:
        for pid, started in children.items():
            if is_alive(pid, started):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
