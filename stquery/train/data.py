"""Manifest, frame decoding and batching (docs/training.md §5).

Manifest: one JSON object per line (JSONL). Keys:

- exactly one visual source:
  ``video``: a video file (anything FFmpeg reads, decoded with PyAV) or a folder of frame images
  (sorted by name); ``features``: precomputed per-frame features, a ``.safetensors`` / ``.pt`` /
  ``.npy`` file holding ``[N, Nv, Dv]`` (or ``[N, Dv]``), or ``file.safetensors#key`` for one tensor
  of a file that holds many clips;
- ``question`` (str), ``answer`` (str);
- optional ``context`` (str, or list of str joined by newlines), ``options`` (list of str: the answer
  must be one of them), ``start`` / ``end`` (seconds, a sub-range of the video), ``id``, ``task``
  (groups metrics), anything else (kept in ``meta``).

Relative paths are resolved against the manifest's folder. Blank lines are ignored.

Frames are sampled uniformly: of N frames (or of the ``[start, end)`` time range), frame
``floor((i + 0.5) * N / T)`` for i in 0..T-1, the centre of each of T equal segments (the TSN /
VideoLLaMA convention). A clip shorter than T frames repeats frames.

Bad data (malformed line, missing field, answer not among options, missing or undecodable video or
features) raises :class:`DataError` naming the manifest file and line (and the video file), or with
``on_error="skip"`` is dropped and reported: manifest problems when the manifest is read
(:attr:`Manifest.skipped`), decoding problems when the clip is loaded (the batch's ``skipped``
list); the trainer counts both in its log. Nothing is dropped silently.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._optional import require


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DataError(ValueError):
    """A problem with one manifest record; ``where`` is ``"manifest.jsonl:LINE"``."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.reason = message


@dataclass
class Record:
    where: str  # "path/to/manifest.jsonl:LINE"
    question: str
    answer: str
    context: str = ""
    options: list[str] | None = None
    video: Path | None = None
    features: str | None = None  # "path" or "path#key"
    start: float | None = None
    end: float | None = None
    id: str = ""
    task: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class Manifest:
    path: Path
    records: list[Record]
    skipped: list[tuple[str, str]]  # (where, reason) of lines dropped under on_error="skip"


_KNOWN = {"video", "features", "question", "answer", "context", "options", "start", "end", "id", "task"}


def parse_record(obj: Any, where: str, root: Path, check_files: bool = True) -> Record:
    """Validate one manifest object; raise :class:`DataError` naming ``where`` on any problem."""
    if not isinstance(obj, dict):
        raise DataError(where, f"a manifest line must be a JSON object, got {type(obj).__name__}")
    has_video, has_features = obj.get("video") is not None, obj.get("features") is not None
    if has_video == has_features:
        raise DataError(where, "needs exactly one of 'video' (file or frames folder) or 'features'")
    for key in ("question", "answer"):
        if not isinstance(obj.get(key), str):
            raise DataError(where, f"missing or non-string {key!r} (got {obj.get(key)!r})")
    context = obj.get("context", "") or ""
    if isinstance(context, list) and all(isinstance(c, str) for c in context):
        context = "\n".join(context)
    if not isinstance(context, str):
        raise DataError(where, f"'context' must be a string or a list of strings, got {type(context).__name__}")
    options = obj.get("options")
    if options is not None:
        if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
            raise DataError(where, f"'options' must be a non-empty list of strings, got {options!r}")
        if obj["answer"] not in options:
            raise DataError(where, f"answer {obj['answer']!r} is not among options {options}")
    for key in ("start", "end"):
        if obj.get(key) is not None and not isinstance(obj[key], (int, float)):
            raise DataError(where, f"{key!r} must be a number of seconds, got {obj[key]!r}")
    video = features = None
    if has_video:
        video = _resolve(root, obj["video"])
        if check_files and not video.exists():
            raise DataError(where, f"video not found: {video}")
    else:
        features = str(obj["features"])
        file, _, key = features.partition("#")
        file_path = _resolve(root, file)
        if check_files and not file_path.exists():
            raise DataError(where, f"features file not found: {file_path}")
        features = str(file_path) + (f"#{key}" if key else "")
    return Record(
        where=where, question=obj["question"], answer=obj["answer"], context=context, options=options,
        video=video, features=features, start=obj.get("start"), end=obj.get("end"),
        id=str(obj.get("id", where)), task=str(obj.get("task", "")),
        meta={k: v for k, v in obj.items() if k not in _KNOWN},
    )


def _resolve(root: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else root / path


def read_manifest(path: str | Path, on_error: str = "raise", check_files: bool = True) -> Manifest:
    """Read and validate a JSONL manifest. See the module docstring for the keys."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest not found: {path}")
    records, skipped = [], []
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(where, f"malformed JSON ({e.msg} at column {e.colno})") from None
                records.append(parse_record(obj, where, path.parent, check_files))
            except DataError as e:
                if on_error != "skip":
                    raise
                skipped.append((e.where, e.reason))
    return Manifest(path, records, skipped)


def write_manifest(path: str | Path, records: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Sampling and decoding


def uniform_indices(num_available: int, num_frames: int) -> list[int]:
    """Centres of ``num_frames`` equal segments of ``range(num_available)`` (repeats if fewer)."""
    if num_available < 1:
        raise ValueError("no frames to sample from")
    return [min(num_available - 1, int((i + 0.5) * num_available / num_frames)) for i in range(num_frames)]


def decode_video(path: str | Path, num_frames: int, size: int | None = None,
                 start: float | None = None, end: float | None = None) -> np.ndarray:
    """Decode ``num_frames`` uniformly sampled RGB frames with PyAV: uint8 ``[T, H, W, 3]``.

    A folder is read as a sequence of frame images (sorted by name). ``size``: frames are resized
    to ``size`` x ``size`` by FFmpeg's scaler (None keeps the native size). ``start`` / ``end``
    (seconds) restrict sampling to that range of the video (video files only: a folder of frames
    has no timestamps, and a range there is an error rather than silently the whole video).
    """
    av = require("av", extra="video", feature="decoding videos")

    path = Path(path)
    if path.is_dir():
        if start is not None or end is not None:
            raise ValueError(f"frames folder {path} has no timestamps: start/end need a video file")
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"frames folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        out = []
        for i in uniform_indices(len(files), num_frames):
            with av.open(str(files[i])) as container:
                frame = next(container.decode(video=0))
                out.append(_to_rgb(frame, size))
        return np.stack(out)
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        # Two decodes: the first counts the frames in range (exact, whatever the container
        # reports), the second converts only the sampled ones, so memory holds num_frames frames
        # however long the video is.
        count = sum(1 for _ in _frames_in_range(container, stream, start, end))
        if not count:
            raise ValueError(f"no decodable frames in {path}" + (f" within [{start}, {end})s" if start or end else ""))
        wanted = uniform_indices(count, num_frames)
        keep = set(wanted)
        picked = {i: _to_rgb(frame, size)
                  for i, frame in enumerate(_frames_in_range(container, stream, start, end)) if i in keep}
        return np.stack([picked[i] for i in wanted])


def _frames_in_range(container, stream, start: float | None, end: float | None):
    """The decoded frames of ``stream`` whose time lies in ``[start, end)`` (seconds)."""
    container.seek(int(start / stream.time_base) if start else 0, stream=stream, backward=True, any_frame=False)
    rate = float(stream.average_rate or 1)
    for n, frame in enumerate(container.decode(stream)):
        t = frame.time if frame.time is not None else n / rate
        if start is not None and t < start - 1e-6:
            continue
        if end is not None and t >= end:
            break
        yield frame


def _to_rgb(frame, size: int | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    return frame.reformat(width=size, height=size, format="rgb24").to_ndarray()


_SAFETENSORS_CACHE: dict[str, Any] = {}


def load_features(spec: str, num_frames: int) -> torch.Tensor:
    """Load precomputed features ``[N, Nv, Dv]`` and sample ``num_frames`` of them uniformly."""
    file, _, key = spec.partition("#")
    suffix = Path(file).suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        handle = _SAFETENSORS_CACHE.get(file)
        if handle is None:
            handle = _SAFETENSORS_CACHE[file] = safe_open(file, framework="pt")
        keys = list(handle.keys())
        name = key or ("features" if "features" in keys else (keys[0] if len(keys) == 1 else None))
        if name is None or name not in keys:
            raise ValueError(f"{file} has no tensor {key or 'features'!r} (it has {len(keys)}: {keys[:5]}...)")
        x = handle.get_tensor(name)
    elif suffix in (".pt", ".pth"):
        obj = torch.load(file, map_location="cpu", weights_only=True)
        x = obj[key or "features"] if isinstance(obj, dict) else obj
    elif suffix == ".npy":
        x = torch.from_numpy(np.load(file))
    else:
        raise ValueError(f"unknown features format {suffix!r} (use .safetensors, .pt or .npy)")
    if x.dim() == 2:
        x = x[:, None]
    if x.dim() != 3 or x.shape[0] < 1:
        raise ValueError(f"features must be [N, Nv, Dv] or [N, Dv], got {tuple(x.shape)}")
    return x[uniform_indices(x.shape[0], num_frames)].float()


# ---------------------------------------------------------------------------------------------
# Dataset and batching


class VideoQADataset(torch.utils.data.Dataset):
    """Records -> samples. A sample is a dict with ``visual`` (``features [T, Nv, Dv]`` float32 or
    ``pixels [T, 3, H, W]`` normalised float32), ``visual_kind``, and the record's text fields. A
    clip that fails to load raises :class:`DataError`, or under ``on_error="skip"`` gives
    ``{"skipped": where, "reason": ...}`` that :func:`collate` drops and reports."""

    def __init__(self, records: list[Record], frames: int, image_size: int = 224,
                 mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), on_error: str = "raise"):
        self.records, self.frames, self.image_size, self.on_error = records, frames, image_size, on_error
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.records)

    def load_visual(self, r: Record) -> tuple[torch.Tensor, str]:
        if r.features is not None:
            return load_features(r.features, self.frames), "features"
        frames = decode_video(r.video, self.frames, self.image_size, r.start, r.end)
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)  # [T, 3, H, W]
        return (x - self.mean) / self.std, "pixels"

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        try:
            visual, kind = self.load_visual(r)
        except Exception as e:  # any decoder / loader failure becomes a DataError naming the line
            source = r.video if r.video is not None else r.features
            err = DataError(r.where, f"cannot load {source}: {type(e).__name__}: {e}")
            if self.on_error != "skip":
                raise err from e
            return {"skipped": err.where, "reason": err.reason, "index": i}
        return {"visual": visual, "visual_kind": kind, "index": i, "record": r}


def collate(samples: list[dict]) -> dict:
    """Stack the loaded samples; report (not hide) the skipped ones in ``batch["skipped"]``."""
    good = [s for s in samples if "skipped" not in s]
    skipped = [(s["skipped"], s["reason"]) for s in samples if "skipped" in s]
    batch: dict[str, Any] = {"skipped": skipped, "records": [s["record"] for s in good],
                             "index": torch.tensor([s["index"] for s in good], dtype=torch.long)}
    if good:
        kinds = {s["visual_kind"] for s in good}
        if len(kinds) > 1:
            raise DataError(good[0]["record"].where, "a batch mixes video and features records; use one kind per manifest")
        batch["visual_kind"] = kinds.pop()
        batch["visual"] = torch.stack([s["visual"] for s in good])
        batch["frame_lengths"] = torch.full((len(good),), batch["visual"].shape[1], dtype=torch.long)
    return batch


# ---------------------------------------------------------------------------------------------
# Deterministic, rank-aware batch order


class GlobalBatchSampler:
    """Yields, for one rank, the micro-batches (lists of indices) of each global batch.

    The order of an epoch is a permutation drawn from ``seed + epoch`` (identical on every rank).
    It is cut into global batches of ``global_batch`` indices (a last incomplete one is dropped
    while training); rank r takes its contiguous share of each global batch, then splits it into
    ``grad_accum`` micro-batches. One process with accumulation and N processes therefore see
    exactly the same samples per optimizer step, which is what makes their loss curves match.
    ``start_step`` skips the global batches already done (exact resume).
    """

    def __init__(self, n: int, global_batch: int, grad_accum: int, world_size: int, rank: int,
                 seed: int, shuffle: bool = True, drop_last: bool = True):
        if global_batch % (grad_accum * world_size):
            raise ValueError(f"train.batch_size ({global_batch}) must be divisible by grad_accum × world size "
                             f"({grad_accum} × {world_size})")
        self.n, self.global_batch, self.grad_accum = n, global_batch, grad_accum
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.per_rank = global_batch // world_size
        self.micro = self.per_rank // grad_accum

    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch if self.drop_last else math.ceil(self.n / self.global_batch)

    def epoch(self, epoch: int, start_step: int = 0):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for step in range(start_step, self.steps_per_epoch()):
            chunk = order[step * self.global_batch:(step + 1) * self.global_batch]
            mine = chunk[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
            yield [mine[j * self.micro:(j + 1) * self.micro] for j in range(self.grad_accum)]


def eval_shards(n: int, world_size: int, rank: int, batch_size: int) -> list[list[int]]:
    """Evaluation batches of this rank: a strided share of ``range(n)``, every index exactly once."""
    mine = list(range(rank, n, world_size))
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
