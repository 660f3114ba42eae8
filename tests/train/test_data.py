"""Manifest parsing, decoding (a real video made here with PyAV) and every kind of bad data."""
import json

import numpy as np
import pytest
import torch

from stquery.train.data import (DataError, GlobalBatchSampler, VideoQADataset, collate, decode_video, read_manifest,
                                uniform_indices)
from stquery.train.shapes import make_clip, write_video

from .conftest import read_log


def _nearest(frames, video):
    """Index in ``video`` of the source frame closest to each decoded (lossy) frame."""
    d = np.abs(frames[:, None].astype(int) - video[None].astype(int)).mean(axis=(2, 3, 4))
    return d.argmin(axis=1).tolist()


def _write(path, lines):
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    return path


@pytest.fixture
def clip_video(tmp_path):
    video, answer = make_clip(np.random.default_rng(0), "direction", frames=8, size=32)
    return write_video(tmp_path / "clip.mp4", video), video


def test_uniform_sampling():
    assert uniform_indices(8, 4) == [1, 3, 5, 7]
    assert uniform_indices(100, 4) == [12, 37, 62, 87]
    assert uniform_indices(2, 4) == [0, 0, 1, 1]


def test_real_video_loads_through_pipeline(tmp_path, clip_video):
    path, video = clip_video
    frames = decode_video(path, 4)
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    assert _nearest(frames, video) == [1, 3, 5, 7]  # centres of 4 equal segments of 8 frames
    manifest = _write(tmp_path / "m.jsonl", [{"video": "clip.mp4", "question": "q?", "answer": "up",
                                              "options": ["up", "down"]}])
    ds = VideoQADataset(read_manifest(manifest).records, frames=4, image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    batch = collate([ds[0]])
    assert batch["visual_kind"] == "pixels" and batch["visual"].shape == (1, 4, 3, 16, 16)
    assert batch["visual"].min() >= -1 and batch["visual"].max() <= 1


def test_time_range_and_frames_folder(tmp_path, clip_video):
    path, video = clip_video
    part = decode_video(path, 2, start=0.5, end=1.0)  # 8 fps: frames 4..7
    assert _nearest(part, video) == [5, 7]  # centres of 2 segments of frames 4..7
    import av

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(video):
        with av.open(str(folder / f"{i:03d}.png"), "w", format="image2") as c:
            s = c.add_stream("png")
            s.width, s.height, s.pix_fmt = 32, 32, "rgb24"
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
            for p in s.encode():
                c.mux(p)
    assert np.array_equal(decode_video(folder, 4), video[[1, 3, 5, 7]])  # PNG is lossless
    with pytest.raises(ValueError, match="no timestamps"):  # not silently the whole video
        decode_video(folder, 2, start=0.5, end=1.0)


def test_long_range_converts_only_the_sampled_frames(clip_video, monkeypatch):
    """Memory holds num_frames frames, not the whole range: only sampled frames become RGB."""
    from stquery.train import data

    path, video = clip_video
    converted = []
    real = data._to_rgb
    monkeypatch.setattr(data, "_to_rgb", lambda frame, size: converted.append(1) or real(frame, size))
    frames = decode_video(path, 3)
    assert len(converted) == 3 and frames.shape[0] == 3


def test_malformed_line_names_file_and_line(tmp_path):
    m = _write(tmp_path / "m.jsonl", [{"features": "f.npy", "question": "q", "answer": "a"}, "{not json"])
    np.save(tmp_path / "f.npy", np.zeros((4, 2, 3), np.float32))
    with pytest.raises(DataError, match=r"m\.jsonl:2: malformed JSON"):
        read_manifest(m)
    got = read_manifest(m, on_error="skip")
    assert len(got.records) == 1 and got.skipped[0][0].endswith("m.jsonl:2")


@pytest.mark.parametrize("obj, message", [
    ({"question": "q", "answer": "a"}, "needs exactly one of 'video'"),
    ({"video": "v.mp4", "answer": "a"}, "missing or non-string 'question'"),
    ({"video": "missing.mp4", "question": "q", "answer": "a"}, "video not found: .*missing.mp4"),
    ({"features": "nope.npy", "question": "q", "answer": "a"}, "features file not found"),
    ({"video": "v.mp4", "question": "q", "answer": "maybe", "options": ["yes", "no"]},
     "answer 'maybe' is not among options"),
])
def test_bad_records(tmp_path, obj, message):
    (tmp_path / "v.mp4").write_bytes(b"")
    m = _write(tmp_path / "m.jsonl", ["", json.dumps(obj)])  # blank line 1 is ignored
    with pytest.raises(DataError, match=r"m\.jsonl:2: " + message):
        read_manifest(m)
    assert len(read_manifest(m, on_error="skip").skipped) == 1


def test_corrupt_video_raises_or_is_skipped(tmp_path, clip_video):
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    m = _write(tmp_path / "m.jsonl", [{"video": "clip.mp4", "question": "q", "answer": "a"},
                                      {"video": "corrupt.mp4", "question": "q", "answer": "a"}])
    records = read_manifest(m).records
    with pytest.raises(DataError, match=r"m\.jsonl:2: cannot load .*corrupt\.mp4"):
        VideoQADataset(records, frames=4, image_size=16)[1]
    ds = VideoQADataset(records, frames=4, image_size=16, on_error="skip")
    batch = collate([ds[0], ds[1]])
    assert len(batch["records"]) == 1 and batch["visual"].shape[0] == 1
    assert len(batch["skipped"]) == 1 and batch["skipped"][0][0].endswith("m.jsonl:2")


def test_trainer_counts_skips_in_log(tmp_path, make_config):
    """Through the trainer: a malformed line, a wrong answer and a corrupt features file are each
    skipped and counted in metrics.jsonl under data.on_error=skip; with on_error=raise the run stops."""
    from stquery.train.cli import main
    from stquery.train.shapes import generate

    paths = generate(tmp_path / "data", num_train=32, num_val=16, size=12, patch=6, tasks=("direction",))
    lines = paths["train"].read_text().splitlines()
    (tmp_path / "data" / "corrupt.safetensors").write_bytes(b"garbage" * 20)
    bad = json.loads(lines[0])
    bad_answer = dict(bad, answer="sideways")
    corrupt = dict(bad, features="corrupt.safetensors")
    lines[3:3] = ["{broken", json.dumps(bad_answer), json.dumps(corrupt)]  # manifest lines 4, 5, 6
    paths["train"].write_text("\n".join(lines) + "\n")
    cfg = make_config(data={"train": str(paths["train"]), "val": str(paths["val"]), "shapes": None},
                      train={"epochs": 1, "batch_size": 33})
    with pytest.raises(DataError, match=r"train\.jsonl:4: malformed JSON"):
        main(["train", str(cfg)])
    main(["train", str(cfg), "--set", "data.on_error=skip"])
    out = tmp_path / "run"
    skipped = read_log(out, "skipped")
    assert sorted(int(s["where"].rsplit(":", 1)[1]) for s in skipped) == [4, 5, 6]
    assert "corrupt.safetensors" in [s for s in skipped if s["where"].endswith(":6")][0]["reason"]
    assert [(s["split"], s["count"]) for s in read_log(out, "skip_summary")] == [("train", 3)]


def test_global_batches_split_across_ranks():
    one = GlobalBatchSampler(20, 8, 2, 1, 0, seed=3)
    two = [GlobalBatchSampler(20, 8, 1, 2, r, seed=3) for r in range(2)]
    for a, b0, b1 in zip(one.epoch(0), two[0].epoch(0), two[1].epoch(0)):
        assert a[0] + a[1] == b0[0] + b1[0]  # same clips per optimizer step
    assert len(list(one.epoch(1, start_step=1))) == one.steps_per_epoch() - 1
    with pytest.raises(ValueError, match="divisible"):
        GlobalBatchSampler(20, 6, 4, 1, 0, seed=0)
