"""Synthetic "moving shapes" clips whose answers need motion, so temporal modelling is measurable.

Two tasks (``tasks`` option):

- ``direction``: one shape travels around the corners of a square (clockwise or counter-clockwise,
  from a random corner; for T = 4 frames it sits on one corner per frame, for T = 4k on k evenly
  spaced points per side); 0-2 static distractor shapes. Question: "In which direction does the
  moving shape go first?", options up / down / left / right (chance 25%).
  *Why a square path and not a straight line*: every (start corner, sense) pair visits the same
  set of positions, so the multiset of frames is identical for all four answers. A model that sees
  frames independently and pools them symmetrically over time is therefore exactly at chance; with
  a straight line it could still read the axis from the set of positions (50%). Only order —
  temporal modelling — answers the question.
- ``count``: three shapes, 0-3 of which move in straight lines (the others stay). Question: "How many
  shapes are moving?", options 0 / 1 / 2 / 3.

Each clip is rendered as RGB frames ``[T, S, S, 3]`` (black background, squares and discs in 6
colours). The precomputed features are the raw frame patches: ``[T, (S/p)^2, p*p*3 + (S/p)^2]``, pixels in [-0.5, 0.5]
plus a one-hot of the patch position (each frame on its own: no temporal information in the
features). :func:`generate` writes a
manifest per split (docs/training.md §5) whose ``features`` point into one ``.safetensors`` file per split, and
optionally the clips as real video files (PyAV) for the decoding path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .._optional import require


COLORS = np.array([[255, 40, 40], [40, 220, 40], [60, 90, 255], [240, 220, 40], [230, 60, 230], [40, 220, 230]],
                  dtype=np.uint8)
DIRECTIONS = ["up", "down", "left", "right"]
_CW_FIRST = ["right", "down", "left", "up"]   # clockwise from corner TL, TR, BR, BL (y grows downwards)
_CCW_FIRST = ["down", "left", "up", "right"]  # counter-clockwise from the same corners
QUESTIONS = {
    "direction": "In which direction does the moving shape go first?",
    "count": "How many shapes are moving?",
}
OPTIONS = {"direction": DIRECTIONS, "count": ["0", "1", "2", "3"]}


def _draw(canvas: np.ndarray, cx: float, cy: float, radius: float, kind: int, color: np.ndarray) -> None:
    s = canvas.shape[0]
    yy, xx = np.mgrid[0:s, 0:s]
    if kind == 0:  # square
        m = (np.abs(xx + 0.5 - cx) <= radius) & (np.abs(yy + 0.5 - cy) <= radius)
    else:  # disc
        m = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= radius ** 2
    canvas[m] = color


def _square_path(rng: np.random.Generator, frames: int, size: int, radius: float):
    if frames % 4:
        raise ValueError(f"the direction task needs a multiple of 4 frames, got {frames}")
    side = rng.uniform(size * 0.3, size * 0.55)
    x0 = rng.uniform(radius + 0.5, size - radius - 0.5 - side)
    y0 = rng.uniform(radius + 0.5, size - radius - 0.5 - side)
    corners = np.array([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]])  # TL TR BR BL
    start, sense = int(rng.integers(4)), 1 if rng.random() < 0.5 else -1
    k = frames // 4  # points per side
    pts = []
    for i in range(frames):
        pos = (start * k + sense * i) % frames  # position index along the clockwise perimeter
        c, f = divmod(pos, k)
        a, b = corners[c], corners[(c + 1) % 4]
        pts.append(a + (b - a) * (f / k))
    answer = (_CW_FIRST if sense == 1 else _CCW_FIRST)[start]
    return np.array(pts), answer


def make_clip(rng: np.random.Generator, task: str, frames: int = 4, size: int = 24) -> tuple[np.ndarray, str]:
    """One clip: uint8 frames ``[T, size, size, 3]`` and its answer."""
    video = np.zeros((frames, size, size, 3), dtype=np.uint8)
    radius = size / 10
    colors = rng.permutation(len(COLORS))
    if task == "direction":
        path, answer = _square_path(rng, frames, size, radius)
        kind = int(rng.integers(2))
        statics = [(rng.uniform(radius, size - radius, 2), int(rng.integers(2)), COLORS[colors[1 + j]])
                   for j in range(int(rng.integers(3)))]
        for t in range(frames):
            for (x, y), k2, col in statics:
                _draw(video[t], x, y, radius, k2, col)
            _draw(video[t], path[t, 0], path[t, 1], radius, kind, COLORS[colors[0]])
        return video, answer
    if task == "count":
        movers = int(rng.integers(4))
        for j in range(3):
            kind = int(rng.integers(2))
            speed = rng.uniform(size * 0.12, size * 0.2) if j < movers else 0.0
            angle = rng.uniform(0, 2 * np.pi)
            v = speed * np.array([np.cos(angle), np.sin(angle)])
            span = v * (frames - 1)
            lo = np.maximum(radius, radius - span)
            hi = np.minimum(size - radius, size - radius - span)
            p0 = rng.uniform(lo, np.maximum(lo, hi))
            for t in range(frames):
                x, y = p0 + v * t
                _draw(video[t], x, y, radius, kind, COLORS[colors[j]])
        return video, str(movers)
    raise ValueError(f"unknown moving-shapes task {task!r}; known: {sorted(QUESTIONS)}")


def patch_features(video: np.ndarray, patch: int) -> torch.Tensor:
    """Raw patches as visual tokens, with their position: ``[T, S, S, 3]`` uint8 ->
    ``[T, P, patch*patch*3 + P]``, ``P = (S/patch)^2``: the patch's pixels in [-0.5, 0.5] then a
    one-hot of the patch's index (the role of a ViT's position embedding: cross-attention is
    permutation invariant over visual tokens, so without it no frame would tell where its shape
    is)."""
    t, s, _, c = video.shape
    if s % patch:
        raise ValueError(f"frame size {s} is not a multiple of patch {patch}")
    n = s // patch
    x = torch.from_numpy(video).float().div_(255.0).sub_(0.5)  # [T, S, S, 3]
    x = x.view(t, n, patch, n, patch, c).permute(0, 1, 3, 2, 4, 5)  # [T, n, n, p, p, 3]
    x = x.reshape(t, n * n, patch * patch * c)
    position = torch.eye(n * n).expand(t, n * n, n * n)  # [T, P, P]
    return torch.cat([x, position], dim=-1).contiguous()


def write_video(path: str | Path, video: np.ndarray, fps: int = 8) -> Path:
    """Write uint8 frames ``[T, H, W, 3]`` as an MPEG-4 file with PyAV."""
    av = require("av", extra="video", feature="writing the moving-shapes videos")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        stream.options = {"qscale": "2"}
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def generate(out_dir: str | Path, num_train: int = 2000, num_val: int = 400, seed: int = 0, frames: int = 4,
             size: int = 24, patch: int = 6, tasks=("direction",), write_videos: bool = False) -> dict[str, Path]:
    """Write ``{train,val}.jsonl`` (+ ``{train,val}_features.safetensors``, and ``videos/`` when
    ``write_videos``) under ``out_dir``; return the manifest paths. Deterministic in ``seed``;
    an existing set made with the same options is reused."""
    from safetensors.torch import save_file

    from .data import write_manifest

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = f"{num_train} {num_val} {seed} {frames} {size} {patch} {list(tasks)} {write_videos}"
    paths = {split: out_dir / f"{split}.jsonl" for split in ("train", "val")}
    if (out_dir / "options.txt").exists() and (out_dir / "options.txt").read_text() == stamp \
            and all(p.exists() for p in paths.values()):
        return paths
    for split, n, split_seed in (("train", num_train, seed), ("val", num_val, seed + 7919)):
        rng = np.random.default_rng(split_seed)
        tensors, records = {}, []
        for i in range(n):
            task = tasks[i % len(tasks)]
            video, answer = make_clip(rng, task, frames, size)
            key = f"{split}_{i:06d}"
            tensors[key] = patch_features(video, patch)
            rec = {"id": key, "task": task, "question": QUESTIONS[task], "options": OPTIONS[task], "answer": answer}
            if write_videos:
                write_video(out_dir / "videos" / f"{key}.mp4", video)
                rec["video"] = f"videos/{key}.mp4"
            else:
                rec["features"] = f"{split}_features.safetensors#{key}"
            records.append(rec)
        if not write_videos:
            save_file(tensors, str(out_dir / f"{split}_features.safetensors"))
        write_manifest(paths[split], records)
    (out_dir / "options.txt").write_text(stamp)
    return paths
