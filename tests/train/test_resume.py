"""Stop after N steps + --resume == one uninterrupted run, bitwise, on CPU."""
from pathlib import Path

import torch
from safetensors.torch import load_file

from stquery.train.cli import main

from .conftest import read_log


def _final_weights(out: Path) -> dict:
    latest = (out / "checkpoints" / "latest").read_text().strip()
    return load_file(str(out / "checkpoints" / latest / "trainable.safetensors"))


def test_stop_and_resume_is_bitwise_identical(make_config):
    # dropout on, so the resumed run must also restore the RNG; grad accumulation on; the stop
    # falls in the middle of epoch 2 (4 steps per epoch).
    sections = dict(model={"options": {"dropout": 0.1, "train_base": False}}, train={"epochs": 3, "grad_accum": 2, "warmup_steps": 2})
    full = make_config("full", **sections)
    split = make_config("split", **sections)
    main(["train", str(full)])
    main(["train", str(split), "--set", "train.stop_after=6"])
    out_split = Path(split.parent / "split")
    assert (out_split / "checkpoints" / "latest").read_text().strip() == "step_000006"
    main(["train", str(split), "--resume"])

    a, b = _final_weights(split.parent / "full"), _final_weights(out_split)
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # only trainable tensors are saved: LoRA, routers, position embeddings, head; no frozen Q-Former
    assert not any(k.startswith("qformer.qformer.") or k == "qformer.query_tokens" for k in a)
    assert any(".lora_q_temporal." in k for k in a) and "qformer.e_t" in a and "head.weight" in a
    losses_full = [r["loss"] for r in read_log(split.parent / "full", "train")]
    losses_split = [r["loss"] for r in read_log(out_split, "train")]
    assert losses_full == losses_split
