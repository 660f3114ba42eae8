"""TemporalPoolAdapter (SPEC §4.3)."""
import torch
from torch import nn

from stquery.models import TemporalPoolAdapter

B, T, P, C, K = 2, 4, 9, 16, 12


def _alignment():
    return nn.Sequential(nn.Linear(C, 20), nn.GELU(), nn.Linear(20, K))


def test_shapes_pooling_and_trainable_copy():
    alignment = _alignment()
    adapter = TemporalPoolAdapter(alignment)
    x = torch.randn(B, T, P, C)
    out = adapter(x)
    assert out.shape == (B, T + P, K) and adapter.out_features == K
    torch.testing.assert_close(out[:, :T], alignment(x.mean(2)))  # temporal copy starts equal to g_z
    torch.testing.assert_close(out[:, T:], alignment(x.mean(1)))
    assert all(p.requires_grad for p in adapter.temporal_alignment.parameters())
    assert not any(p.requires_grad for p in adapter.alignment.parameters())
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.temporal_alignment.parameters())
    assert all(p.grad is None for p in adapter.alignment.parameters())
    trainable, total = adapter.parameter_counts()
    assert trainable == sum(p.numel() for p in alignment.parameters()) and total == 2 * trainable


def test_frame_lengths_batch_equals_each_video_alone():
    adapter = TemporalPoolAdapter(_alignment())
    with torch.no_grad():
        for p in adapter.temporal_alignment.parameters():
            p.add_(0.1)
    x = torch.randn(B, T, P, C)
    x[1, 3:] = 7.0
    lengths = torch.tensor([4, 3])
    out = adapter(x, lengths)
    tokens, mask = adapter.visual_tokens(x, lengths)
    assert torch.equal(mask[1], torch.tensor([True] * 3 + [False] + [True] * P))
    for b in range(B):
        n = int(lengths[b])
        alone = adapter(x[b:b + 1, :n])
        torch.testing.assert_close(out[b:b + 1, :n], alone[:, :n])
        torch.testing.assert_close(out[b:b + 1, T:], alone[:, n:])
    assert out[1, 3].abs().max() == 0
