"""docs/linvt.md's recipes give LinVT's released arithmetic: torch.topk (score order), no gate,
avg_pool1d that drops a trailing partial window."""
import pytest
import torch
import torch.nn.functional as F

import stquery as stq


def _linvt(x, scores, k, scales):
    idx = torch.topk(scores, k, dim=1).indices
    y = x.gather(1, idx[..., None].expand(-1, -1, x.shape[2]))
    return torch.cat([F.avg_pool1d(y.transpose(1, 2), s, s).transpose(1, 2) for s in scales], dim=1)


@pytest.mark.parametrize("k", [28, 30, 31])
def test_linvt_recipe(k):
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(2, 40, 8, generator=gen, dtype=torch.float64)
    scores = torch.randn(2, 40, generator=gen, dtype=torch.float64)  # distinct: no ties
    scales = (1, 2, 4)
    expected = _linvt(x, scores, k, scales)
    y, _ = stq.topk_tokens(x, scores, k, order="score", scales=scales, backend="torch")
    if all(k % s == 0 for s in scales):
        torch.testing.assert_close(y, expected)
    else:
        assert y.shape[1] > expected.shape[1]
    blocks, start = [], 0
    for s in scales:
        blocks.append(y[:, start:start + k // s])
        start += -(-k // s)
    torch.testing.assert_close(torch.cat(blocks, dim=1), expected)
