"""stquery/models holds no private attention: every attention goes through the stquery ops."""
import pathlib
import re

import torch

import stquery as stq
from stquery.models import LinVTTokenizer, TemporalPoolAdapter

MODELS = pathlib.Path(stq.__file__).parent / "models"
FORBIDDEN = re.compile(r"scaled_dot_product|\bmatmul\b|\bbmm\b|\beinsum\b|[^@\s]\s@\s|\.topk\(|flex_attention")


def test_no_private_attention_code():
    for path in sorted(MODELS.glob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            assert not FORBIDDEN.search(code), f"{path.name}:{i}: {line.strip()}"


def test_models_call_the_ops(monkeypatch):
    calls = []
    for name in ("attention", "temporal_attention", "topk_tokens", "st_pool"):
        op = getattr(stq, name)
        monkeypatch.setattr(stq, name, lambda *a, _op=op, _n=name, **k: (calls.append(_n), _op(*a, **k))[1])
    LinVTTokenizer(16, num_heads=2, svr_layers=1, tta_layers=1, k=4, scales=(1, 2), num_queries=(2, 1))(torch.randn(1, 2, 4, 16))
    TemporalPoolAdapter(torch.nn.Linear(16, 8))(torch.randn(1, 2, 4, 16))
    assert {"attention", "temporal_attention", "topk_tokens", "st_pool"} <= set(calls)
