"""torchrun --nproc_per_node 2 (gloo, CPU) == one process with the same global batch."""
import os
import subprocess
import sys

import pytest

from stquery.train.cli import main

from .conftest import REPO, read_log


def test_two_processes_match_one(make_config):
    sections = dict(train={"epochs": 1, "batch_size": 8, "threads": 1}, data={"shapes": {"num_train": 40}})
    single = make_config("single", **sections)
    double = make_config("double", **sections)
    main(["train", str(single), "--set", "train.grad_accum=2"])  # micro-batch 4, like each rank below
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stquery.train.cli", "train", str(double)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]

    one = [r["loss"] for r in read_log(single.parent / "single", "train")]
    two = [r["loss"] for r in read_log(double.parent / "double", "train")]
    assert len(one) == len(two) == 5  # 40 clips / global batch 8, logged once per step by rank 0 only
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
    checkpoints = sorted(p.name for p in (double.parent / "double" / "checkpoints").iterdir())
    assert checkpoints == ["latest", "step_000005"]
    evals = read_log(double.parent / "double", "eval")
    assert len(evals) == 1 and evals[0]["n"] == 16  # every validation clip once, across both ranks
