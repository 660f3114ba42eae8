"""Helpers for the trainer tests: tiny moving-shapes configs that train in seconds on a CPU."""
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def tiny_config(tmp_path: Path, name: str = "run", **sections) -> Path:
    """A YAML config for a few-second moving-shapes run under ``tmp_path``; ``sections`` update it."""
    cfg = {
        "seed": 0,
        "output_dir": str(tmp_path / name),
        "data": {"frames": 4, "shapes": {"num_train": 32, "num_val": 16, "size": 12, "patch": 6,
                                         "tasks": ["direction", "count"], "dir": str(tmp_path / "data")}},
        "model": {"kind": "shapes_classifier", "temporal": True, "dar": False,
                  "options": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
                              "num_queries": 4, "visual_dim": 6 * 6 * 3 + 4, "lora_rank": 4, "train_base": True}},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1.0e-3, "log_every": 1, "progress": False, "threads": 1},
        "eval": {"batch_size": 16},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            _deep_update(cfg[key], value)
        else:
            cfg[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _deep_update(base: dict, update: dict) -> None:
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v


def read_log(output_dir: Path, event: str) -> list[dict]:
    import json

    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == event]


@pytest.fixture
def make_config(tmp_path):
    return lambda name="run", **sections: tiny_config(tmp_path, name, **sections)
