"""TemporalPoolAdapter (docs/models.md §4.3)."""
import torch
from torch import nn

from stquery.models import TemporalPoolAdapter

from .bounds import assert_within_bound, float64_copy

B, T, P, C, K = 2, 4, 9, 16, 12


def _alignment():
    return nn.Sequential(nn.Linear(C, 20), nn.GELU(), nn.Linear(20, K))


def test_shapes_pooling_and_trainable_copy():
    alignment = _alignment()
    adapter = TemporalPoolAdapter(alignment)
    x = torch.randn(B, T, P, C)
    out = adapter(x)
    assert out.shape == (B, T + P, K) and adapter.out_features == K
    g64 = float64_copy(alignment)
    with torch.no_grad():  # the temporal copy starts equal to g_z
        assert_within_bound(out[:, :T].detach(), g64(x.double().mean(2)), alignment(x.mean(2)), name="temporal")
        assert_within_bound(out[:, T:].detach(), g64(x.double().mean(1)), alignment(x.mean(1)), name="spatial")
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
    adapter64 = float64_copy(adapter)
    x = torch.randn(B, T, P, C)
    x[1, 3:] = 7.0
    lengths = torch.tensor([4, 3])
    with torch.no_grad():
        out = adapter(x, lengths)
        tokens, mask = adapter.visual_tokens(x, lengths)
        assert torch.equal(mask[1], torch.tensor([True] * 3 + [False] + [True] * P))
        for b in range(B):
            n = int(lengths[b])
            alone = adapter(x[b:b + 1, :n])
            truth = adapter64(x[b:b + 1, :n].double())
            assert_within_bound(out[b:b + 1, :n], truth[:, :n], alone[:, :n], name=f"temporal {b}")
            assert_within_bound(out[b:b + 1, T:], truth[:, n:], alone[:, n:], name=f"spatial {b}")
    assert out[1, 3].abs().max() == 0


def test_frame_lengths_zero_and_clipping():
    """The ops' rule: lengths clipped to [0, T]; a video of 0 frames gives zeros, all masked out."""
    adapter = TemporalPoolAdapter(_alignment())
    x = torch.randn(B, T, P, C)
    with torch.no_grad():
        full = adapter(x)
        tokens, mask = adapter.visual_tokens(x, torch.tensor([T + 2, T]))
        assert mask.all()
        assert_within_bound(tokens, float64_copy(adapter)(x.double()), full)
        tokens, mask = adapter.visual_tokens(x, torch.tensor([0, -1]))
    assert tokens.abs().max() == 0 and not mask.any()
    adapter(x, torch.tensor([0, 2])).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in adapter.temporal_alignment.parameters())
