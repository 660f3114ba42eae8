"""The moving-shapes set needs motion, and the temporal model learns it while the ablation can't."""
from collections import Counter

import numpy as np
import pytest

from stquery.train.cli import main
from stquery.train.shapes import _square_path, make_clip

from .conftest import read_log


@pytest.mark.parametrize("frames", [4, 8])
def test_direction_frames_are_the_same_set_for_every_answer(frames):
    rng = np.random.default_rng(1)
    answers = Counter()
    for _ in range(100):
        pts, answer = _square_path(rng, frames, 32, 3.2)  # [T, 2] (x, y) of the moving shape
        answers[answer] += 1
        dx, dy = np.sign((pts[1] - pts[0]).round(6))
        assert {(0, -1): "up", (0, 1): "down", (-1, 0): "left", (1, 0): "right"}[(dx, dy)] == answer
        # The positions are the T evenly spaced points of the square's perimeter whatever the
        # answer: the unordered frames hold no information about it.
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        k = frames // 4
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        expected = [corners[c] + (corners[(c + 1) % 4] - corners[c]) * j / k for c in range(4) for j in range(k)]
        assert sorted(map(tuple, pts.round(6))) == sorted(map(tuple, np.array(expected).round(6)))
    assert set(answers) == {"up", "down", "left", "right"} and min(answers.values()) > 10


def test_clip_renders_the_path():
    video, answer = make_clip(np.random.default_rng(0), "direction", 4, 24)
    assert video.shape == (4, 24, 24, 3) and video.dtype == np.uint8 and answer in ("up", "down", "left", "right")


def test_count_task_answers():
    rng = np.random.default_rng(0)
    answers = Counter(make_clip(rng, "count", 4, 24)[1] for _ in range(200))
    assert set(answers) == {"0", "1", "2", "3"}


def test_temporal_learns_direction_and_ablation_cannot(make_config):
    """A short version of the README run (configs/moving_shapes.yaml), looser bounds."""
    sections = dict(
        data={"shapes": {"num_train": 2400, "num_val": 200, "size": 24, "patch": 6, "tasks": ["direction"]}},
        model={"options": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128,
                           "num_queries": 4, "visual_dim": 6 * 6 * 3 + 16, "position_init_std": 0.5}},
        train={"epochs": 5, "batch_size": 32, "lr": 2.0e-3, "warmup_steps": 50, "log_every": 50},
        eval={"batch_size": 200},
    )
    cfg = make_config("temporal", **sections)
    main(["train", str(cfg)])
    with_t = read_log(cfg.parent / "temporal", "eval")[-1]["accuracy"]
    cfg = make_config("spatial", **sections)
    main(["train", str(cfg), "--set", "model.temporal=false"])
    without_t = read_log(cfg.parent / "spatial", "eval")[-1]["accuracy"]
    assert with_t >= 0.7, with_t
    assert without_t <= 0.4, without_t
