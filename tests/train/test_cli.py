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
