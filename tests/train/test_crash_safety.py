"""A run killed with SIGKILL (mid-epoch, or inside a checkpoint write) and resumed ends bitwise where
an uninterrupted run ends; a checkpoint whose pickle would run code is refused."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stquery.train import checkpoint as ckpt
from stquery.train.cli import main

from .conftest import read_log, tiny_config

KILLABLE = Path(__file__).with_name("killable.py")
# dropout (the RNG must be restored), grad accumulation, 4 steps per epoch, 8 in all; checkpoints
# at steps 3, 4 (epoch end), 6 and 8 (epoch end); the last 2 kept.
SECTIONS = dict(model={"options": {"dropout": 0.1, "train_base": False}},
                train={"epochs": 2, "grad_accum": 2, "warmup_steps": 2, "checkpoint_every": 3, "keep_checkpoints": 2})


def _weights(out: Path) -> dict:
    return load_file(str(ckpt.resolve(out) / "trainable.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    cfg = tiny_config(tmp_path_factory.mktemp("full"), "full", **SECTIONS)
    main(["train", str(cfg)])
    return cfg.parent / "full"


def _run_until_killed(cfg: Path, stop_at: str, tmp_path: Path) -> None:
    marker, log = tmp_path / "stopped", tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(KILLABLE), stop_at, str(marker), "train", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, f"exited before {stop_at}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"never reached {stop_at}"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None and not marker.exists():
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("stop_at, left", [
    ("step:6", ["latest", "step_000003", "step_000004"]),  # mid-epoch 2: step 5 done, not checkpointed
    ("torn:3", [".step_000006.*", "latest", "step_000003", "step_000004"]),  # step 6's weights half-written
    ("latest:3", ["latest", "step_000003", "step_000004", "step_000006"]),  # step 6 in place, `latest` not updated
])
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, uninterrupted, stop_at, left):
    cfg = tiny_config(tmp_path, "killed", **SECTIONS)
    out = tmp_path / "killed"
    _run_until_killed(cfg, stop_at, tmp_path)

    # what the kill left: `latest` names step 4's checkpoint, complete, which loads
    names = sorted(p.name if not p.name.startswith(".") else p.name.rsplit(".", 1)[0] + ".*"
                   for p in (out / "checkpoints").iterdir())
    assert names == left
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000004"
    where = ckpt.resolve(out)
    assert ckpt.load_state(where)["step"] == 4 and _weights(out)

    main(["train", str(cfg), "--resume"])
    a, b = _weights(uninterrupted), _weights(out)
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # every logged loss (steps 5.. logged twice: before the kill and after the resume) is the uninterrupted one
    full = {r["step"]: r["loss"] for r in read_log(uninterrupted, "train")}
    resumed = read_log(out, "train")
    assert {r["step"] for r in resumed} == set(full)
    assert all(r["loss"] == full[r["step"]] for r in resumed)
    # the last 2 checkpoints kept; no temporary folder left behind
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_000006", "step_000008"]


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_resume_refuses_a_checkpoint_whose_pickle_runs_code(make_config, tmp_path, capsys):
    from stquery.cli import main as stquery

    cfg = make_config(train={"epochs": 1, "stop_after": 1})
    main(["train", str(cfg)])
    where = ckpt.resolve(tmp_path / "run")
    state = ckpt.load_state(where)  # a real checkpoint loads with weights_only=True
    marker = tmp_path / "ran"
    torch.save(dict(state, step=_RunsCode(marker)), where / "state.pt")
    with pytest.raises(ValueError, match=r"state\.pt: refusing to load .*posix\.mkdir"):
        main(["train", str(cfg), "--resume"])
    assert not marker.exists()
    assert stquery(["train", str(cfg), "--resume"]) == 2  # the command: one line, no traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("stquery train: error: ") and "Traceback" not in "".join(err)
    assert not marker.exists()
