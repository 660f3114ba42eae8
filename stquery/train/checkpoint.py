"""Checkpoints: trainable weights only (safetensors) + optimizer + scheduler + progress + RNG state.

Layout of ``OUTPUT/checkpoints/step_000123/``:

- ``trainable.safetensors``: the parameters with ``requires_grad`` (and nothing frozen: the frozen
  base is rebuilt from the config / pretrained weights);
- ``state.pt``: optimizer and scheduler state dicts, ``step``, ``epoch``, ``step_in_epoch``,
  and the RNG states (Python, NumPy, torch CPU, CUDA) of **every rank**, so that a resumed run
  draws the same random numbers (dropout) as an uninterrupted one;
- ``config.yaml``: the config the run used.

``OUTPUT/checkpoints/latest`` names the newest one. Only rank 0 writes.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .config import dump_config


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory: Path, model, optimizer, scheduler, *, step: int, epoch: int, step_in_epoch: int,
         rng_states: list, config: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), str(directory / "trainable.safetensors"))
    torch.save({
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "rng": rng_states,
    }, directory / "state.pt")
    dump_config(config, directory / "config.yaml")
    (directory.parent / "latest").write_text(directory.name + "\n")
    return directory


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, or an output / checkpoints directory (then its ``latest``)."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        if (candidate / "trainable.safetensors").exists():
            return candidate
        if (candidate / "latest").exists():
            return candidate / (candidate / "latest").read_text().strip()
    raise FileNotFoundError(f"no checkpoint at {path} (expected trainable.safetensors or a 'latest' file)")


def load_weights(directory: Path, model: torch.nn.Module) -> None:
    """Load trainable weights; every trainable parameter must be in the file and vice versa."""
    weights = load_file(str(Path(directory) / "trainable.safetensors"))
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
    return torch.load(Path(directory) / "state.pt", map_location="cpu", weights_only=False)
