import pytest

from stquery.train.config import ConfigError, load_config, parse_override


def test_defaults_follow_the_paper():
    cfg = load_config()
    t = cfg["train"]
    assert (t["lr"], t["betas"], t["weight_decay"]) == (1e-4, [0.9, 0.95], 0.05)
    assert cfg["data"]["frames"] == 4


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-4\n")
    cfg = load_config(path, ["train.lr=3e-4", "model.temporal=false", "data.frames=8", "model.options.labels=[a, b]"])
    assert cfg["train"]["lr"] == pytest.approx(3e-4)
    assert cfg["model"]["temporal"] is False and cfg["data"]["frames"] == 8
    assert cfg["model"]["options"]["labels"] == ["a", "b"]
    assert parse_override("a.b=1") == (["a", "b"], 1)


def test_unknown_key_is_refused():
    with pytest.raises(ConfigError, match="train.lrr"):
        load_config(None, ["train.lrr=1"])
    with pytest.raises(ValueError, match="on_error"):
        load_config(None, ["data.on_error=ignore"])
