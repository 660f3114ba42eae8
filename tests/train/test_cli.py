import json

import pytest

from stquery.train.cli import main

from .conftest import read_log


def test_evaluate_and_activation_checkpointing(make_config, capsys):
    cfg = make_config("plain", train={"epochs": 1})
    main(["train", str(cfg)])
    ckpt_cfg = make_config("ckpt", train={"epochs": 1, "activation_checkpointing": True})
    main(["train", str(ckpt_cfg)])
    plain = [r["loss"] for r in read_log(cfg.parent / "plain", "train")]
    recomputed = [r["loss"] for r in read_log(cfg.parent / "ckpt", "train")]
    assert recomputed == pytest.approx(plain, rel=1e-6)
    capsys.readouterr()
    main(["evaluate", str(cfg), "--checkpoint", str(cfg.parent / "plain")])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["accuracy"] == read_log(cfg.parent / "plain", "eval")[-1]["accuracy"]
    assert set(metrics["tasks"]) == {"direction", "count"}


def test_lmm_head_without_model_paths_says_so(make_config):
    # The LLM head is wired (tests/train/test_lmm.py); without local model paths it says what is missing.
    with pytest.raises(ValueError, match="model.instructblip"):
        main(["train", str(make_config("lmm")), "--set", "model.kind=video_lmm"])


def test_train_output_dir_retention_and_summary(make_config, tmp_path, capsys):
    """Says where it writes; keeps the last 2 checkpoints; ends with a line for a person; refuses to
    train into a used output_dir unless --resume or --overwrite."""
    from stquery.cli import main as stquery

    cfg = make_config(train={"epochs": 2, "checkpoint_every": 1})  # 4 steps per epoch: 8 checkpoints written
    out = tmp_path / "run"
    assert stquery(["train", str(cfg)]) == 0
    captured = capsys.readouterr()
    assert f"writing to {out}/: config.yaml, metrics.jsonl, checkpoints/ (the last 2 kept)" in captured.err
    last = captured.out.strip().splitlines()[-1]
    assert last.startswith("trained to step 8 (epoch 2) in ") and "; val accuracy " in last
    assert last.endswith(f"; checkpoint {out / 'checkpoints' / 'step_000008'}; log {out / 'metrics.jsonl'}")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_000007", "step_000008"]

    assert stquery(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"stquery train: error: output_dir {out} already holds a run (checkpoints, metrics.jsonl): "
                   "continue it with --resume, replace it with --overwrite, or choose another with --set output_dir=DIR")
    with pytest.raises(SystemExit):
        stquery(["train", str(cfg), "--resume", "--overwrite"])

    assert stquery(["train", str(cfg), "--overwrite", "--set", "train.keep_checkpoints=null",
                    "--set", "train.epochs=1"]) == 0
    assert [r["step"] for r in read_log(out, "train")] == [1, 2, 3, 4]  # the first run's log is gone
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["latest"] + [f"step_00000{i}" for i in (1, 2, 3, 4)]
