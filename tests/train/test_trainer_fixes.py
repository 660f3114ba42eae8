"""Trainer regressions: an all-skipped micro-batch under DDP, skips of every rank in the log,
``stop_after`` with ``--resume``."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stquery.train.cli import main

from .conftest import REPO, read_log


def _final_weights(out: Path) -> dict:
    latest = (out / "checkpoints" / "latest").read_text().strip()
    return load_file(str(out / "checkpoints" / latest / "trainable.safetensors"))


def _manifest_with_bad_clip(tmp_path: Path) -> Path:
    """3 good clips and 1 whose features cannot be loaded (skipped when the clip is loaded)."""
    from stquery.train.shapes import generate

    paths = generate(tmp_path / "data", num_train=3, num_val=2, size=12, patch=6, tasks=("direction",))
    lines = paths["train"].read_text().splitlines()
    assert len(lines) == 3
    (tmp_path / "data" / "corrupt.safetensors").write_bytes(b"garbage" * 20)
    lines.insert(1, json.dumps(dict(json.loads(lines[0]), features="corrupt.safetensors")))  # manifest line 2
    paths["train"].write_text("\n".join(lines) + "\n")
    return paths["train"]


def test_ddp_rank_with_only_skipped_clips(tmp_path, make_config):
    """Global batch 2 on 2 ranks: one clip per rank per step, so the bad clip is a whole micro-batch
    on whichever rank draws it. The run must finish (no desync / hang), give the weights and logged
    losses of one process with the same micro-batches (grad_accum 2), and log the skip once per
    epoch whichever rank it was on, with no nan loss."""
    train = _manifest_with_bad_clip(tmp_path)
    sections = dict(data={"train": str(train), "shapes": None, "on_error": "skip"},
                    train={"epochs": 2, "batch_size": 2, "threads": 1})
    single = make_config("single", **sections)
    double = make_config("double", **sections)
    main(["train", str(single), "--set", "train.grad_accum=2"])
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stquery.train.cli", "train", str(double)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]

    one_out, two_out = tmp_path / "single", tmp_path / "double"
    one = [r["loss"] for r in read_log(one_out, "train")]
    two = [r["loss"] for r in read_log(two_out, "train")]
    assert len(one) == len(two) == 4 and all(torch.isfinite(torch.tensor(two)))
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
    a, b = _final_weights(one_out), _final_weights(two_out)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6)
    for out in (one_out, two_out):
        skipped = read_log(out, "skipped")
        assert [s["where"].rsplit(":", 1)[1] for s in skipped] == ["2", "2"], skipped  # one per epoch
        assert [(s["split"], s["count"]) for s in read_log(out, "skip_summary")] == [("train", 2)]


def test_stop_after_then_resume_runs_to_the_end(make_config):
    """stop_after in the YAML is an absolute step: the first run stops there, a --resume with the
    same config goes on to the end (before: each resume stopped after one more step)."""
    cfg = make_config(train={"epochs": 2, "stop_after": 3})  # 4 steps per epoch, 8 in all
    main(["train", str(cfg)])
    out = cfg.parent / "run"
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000003"
    main(["train", str(cfg), "--resume"])
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000008"
    assert [r["step"] for r in read_log(out, "train")] == list(range(1, 9))
    assert [r["step"] for r in read_log(out, "stopped")] == [3]
