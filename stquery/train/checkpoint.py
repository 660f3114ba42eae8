"""Checkpoints: trainable weights only (safetensors) + optimizer + scheduler + progress + RNG state.

Layout of ``OUTPUT/checkpoints/step_000123/``:

- ``trainable.safetensors``: the parameters with ``requires_grad`` (and nothing frozen: the frozen
  base is rebuilt from the config / pretrained weights);
- ``state.pt``: optimizer and scheduler state dicts, ``step``, ``epoch``, ``step_in_epoch``,
  and the RNG states (Python, NumPy, torch CPU, CUDA) of **every rank**, so that a resumed run
  draws the same random numbers (dropout) as an uninterrupted one. Only tensors and plain data
  (dicts, lists, tuples, numbers, strings): it is read with ``torch.load(weights_only=True)``, so
  a shared checkpoint whose pickle names anything else is refused before any of it runs;
- ``config.yaml``: the config the run used.

``OUTPUT/checkpoints/latest`` names the newest one. Only rank 0 writes.

Crash safety: a checkpoint is written into a hidden temporary folder beside its final place, each
file and the folder are fsync'ed, then the folder is renamed into place and only then is ``latest``
replaced (written to a temporary file, fsync'ed, renamed). A process killed at any point leaves
``latest`` naming a complete checkpoint. ``keep`` prunes older checkpoints after that.
"""
from __future__ import annotations

import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .._optional import require
from .config import dump_config


def _safetensors():
    """safetensors, imported on use: ``stquery --help`` imports this module for :class:`CheckpointError`."""
    return require("safetensors.torch", extra="train", feature="stquery train's checkpoints")


class CheckpointError(ValueError):
    """No checkpoint where one was named, or a training state that is not plain data."""


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    """This process's RNG states as tensors and plain data (what ``torch.load(weights_only=True)`` reads)."""
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {"python": random.getstate(),
             "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "gauss": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_latest(folder: Path, name: str) -> None:
    tmp = folder / ".latest.tmp"
    tmp.write_text(name + "\n")
    _fsync(tmp)
    os.replace(tmp, folder / "latest")
    _fsync(folder)


def _step_of(path: Path) -> int | None:
    name = path.name
    return int(name[5:]) if name.startswith("step_") and name[5:].isdigit() and path.is_dir() else None


def save(directory: Path, model, optimizer, scheduler, *, step: int, epoch: int, step_in_epoch: int,
         rng_states: list, config: dict, keep: int | None = None) -> Path:
    """Write the checkpoint ``directory`` (``.../checkpoints/step_NNNNNN``) atomically, point ``latest``
    at it, then delete all but the ``keep`` newest ``step_*`` checkpoints up to ``step`` (``None``: keep all)."""
    directory = Path(directory)
    folder = directory.parent
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".step_*"):  # left by a process killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=folder))
    _safetensors().save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save({
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "rng": rng_states,
    }, tmp / "state.pt")
    dump_config(config, tmp / "config.yaml")
    for file in tmp.iterdir():
        _fsync(file)
    _fsync(tmp)
    if directory.exists():
        # A checkpoint of this step from an abandoned continuation (a resume from an older one);
        # ``latest`` names the checkpoint the run resumed from, not this one, so it stays valid.
        stale = folder / f".{directory.name}.replaced"
        os.replace(directory, stale)
        shutil.rmtree(stale)
    os.replace(tmp, directory)
    _fsync(folder)
    _write_latest(folder, directory.name)
    if keep:
        older = sorted((s, p) for p in folder.iterdir() if (s := _step_of(p)) is not None and s <= step)
        for _, path in older[:-keep]:
            shutil.rmtree(path)
    return directory


def mark_latest(directory: Path) -> None:
    """Point ``latest`` of ``directory``'s folder at it (a run resumed from an older checkpoint)."""
    directory = Path(directory)
    _write_latest(directory.parent, directory.name)


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, or an output / checkpoints directory (then its ``latest``)."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        if (candidate / "trainable.safetensors").exists():
            return candidate
        if (candidate / "latest").exists():
            return candidate / (candidate / "latest").read_text().strip()
    raise CheckpointError(f"no checkpoint at {path} (expected trainable.safetensors or a 'latest' file)")


def load_weights(directory: Path, model: torch.nn.Module) -> None:
    """Load trainable weights; every trainable parameter must be in the file and vice versa."""
    weights = _safetensors().load_file(str(Path(directory) / "trainable.safetensors"))
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    missing, unexpected = expected - set(weights), set(weights) - set(params)
    if missing or unexpected:
        raise KeyError(f"checkpoint {directory} does not match the model: missing {sorted(missing)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}")
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(w)


def load_state(directory: Path) -> dict:
    """The training state of a checkpoint; a file holding anything but tensors and plain data is
    refused (:class:`CheckpointError`) without running any of it."""
    path = Path(directory) / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        why = next((line for line in lines if "global" in line.lower()), lines[0] if lines else type(e).__name__)
        raise CheckpointError(f"{path}: refusing to load a training state that holds objects other than tensors "
                         f"and plain data (a checkpoint from an untrusted source, or from an older stquery): "
                         f"{why}") from None
