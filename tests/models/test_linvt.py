"""LinVTTokenizer (docs/models.md §4.2): temporal order, gate gradients, shapes, padding."""
import pytest
import torch

from stquery.models import LinVTTokenizer

from .bounds import assert_within_bound, float64_copy

B, T, P, C, TEXT_DIM = 2, 4, 9, 40, 24
K, SCALES, QUERIES = 12, (1, 2, 4), (4, 2, 2)


def _model(**kw) -> LinVTTokenizer:
    args = dict(text_dim=TEXT_DIM, num_heads=4, svr_layers=1, tta_layers=1, k=K, scales=SCALES, num_queries=QUERIES)
    return LinVTTokenizer(C, **{**args, **kw})


def _inputs():
    feats = torch.randn(B, T, P, C)
    text = torch.randn(B, 5, TEXT_DIM)
    text_mask = torch.ones(B, 5)
    text_mask[1, 3:] = 0
    return feats, text, text_mask


def test_output_shape():
    model = _model()
    feats, text, text_mask = _inputs()
    out = model(feats, text, text_mask)
    assert out.shape == (B, sum(QUERIES), C) == (B, model.num_tokens, model.out_features)
    assert model(feats).shape == out.shape  # text is optional


def test_runs_under_bf16_autocast():
    """GPU training runs under bf16 autocast: the projections come out in bf16, the raw tokens
    don't, and the attention ops need one dtype."""
    model = _model()
    feats, text, text_mask = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(feats, text, text_mask)
    out.float().sum().backward()
    assert out.shape == (B, sum(QUERIES), C) and torch.isfinite(out).all()
    assert model.score_head.weight.grad is not None


def test_selection_keeps_temporal_order_and_gates_raw_tokens():
    model = _model()
    feats, _, _ = _inputs()
    refined = model.refine(feats)
    idx, scores = refined.index, refined.scores
    assert idx.shape == (B, K)
    assert bool((idx[:, 1:] > idx[:, :-1]).all())  # strictly ascending: frame-major = temporal order
    top = scores.topk(K, dim=1).indices.sort(dim=1).values
    assert torch.equal(idx, top)  # the k most significant tokens
    n1, n2 = K, -(-K // 2)
    assert refined.tokens.shape == (B, sum(-(-K // s) for s in SCALES), C)

    def by_hand(x, s):  # gather, gate, then the scale-1 and scale-2 windows
        picked = torch.gather(x, 1, idx[..., None].expand(B, K, C)) * torch.sigmoid(torch.gather(s, 1, idx))[..., None]
        return torch.cat([picked, picked.reshape(B, K // 2, 2, C).mean(2)], dim=1)

    x = feats.reshape(B, T * P, C)
    with torch.no_grad():
        same, truth = by_hand(x, scores), by_hand(x.double(), scores.double())
        assert_within_bound(refined.tokens[:, :n1 + n2], truth, same, name="scales 1 and 2")


def assert_convex_combinations(out, tokens, scales, k, queries):
    """Every output token of scale i is a convex combination of scale i's refined tokens (float64
    least squares; the residual and the weights within float64 rounding of the sizes involved)."""
    assert out.dtype == tokens.dtype == torch.float64
    Bn, _, C = out.shape
    tol = 1e3 * torch.finfo(torch.float64).eps * max(1.0, out.abs().max().item())
    start, o = 0, 0
    for s, m in zip(scales, queries):
        n = -(-k // s)
        basis = tokens[:, start:start + n].transpose(1, 2)  # [B, C, n]
        target = out[:, o:o + m].transpose(1, 2)  # [B, C, m]
        coef = torch.linalg.lstsq(basis, target).solution  # [B, n, m]
        assert (basis @ coef - target).abs().max() <= tol  # in their span
        assert (coef.sum(1) - 1).abs().max() <= tol * n  # weights sum to 1
        assert coef.min() >= -tol * n  # and are non-negative
        start, o = start + n, o + m


def test_outputs_are_linear_combinations_of_selected_tokens():
    # Linearity principle: with the scores fixed, every output token is a convex combination of
    # the gated selected tokens of its scale, so the output lies in their span.
    model = _model().double()
    feats, text, text_mask = (t.double() for t in _inputs())
    out = model(feats, text, text_mask)
    assert_convex_combinations(out, model.refine(feats).tokens, SCALES, K, QUERIES)


def test_gradients_reach_the_significance_head_through_the_gate():
    model = _model()
    feats, text, text_mask = _inputs()
    feats.requires_grad_(True)
    model(feats, text, text_mask).square().mean().backward()
    assert model.score_head.weight.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # Only the selected rows of the raw tokens get gradient through the gather, the rest only
    # through the score path; both are finite.
    assert torch.isfinite(feats.grad).all()


def test_frame_lengths_batch_equals_each_video_alone():
    model = _model().eval()
    model64 = float64_copy(model)
    feats, text, text_mask = _inputs()
    lengths = torch.tensor([4, 2])
    feats[1, 2:] = 50.0  # padded frames are never selected and never attended
    out = model(feats, text, text_mask, frame_lengths=lengths)
    for b in range(B):
        n = int(lengths[b])
        alone = model(feats[b:b + 1, :n], text[b:b + 1], text_mask[b:b + 1])
        truth = model64(feats[b:b + 1, :n].double(), text[b:b + 1].double(), text_mask[b:b + 1].double())
        assert_within_bound(out[b:b + 1], truth, alone, name=f"video {b}")


def test_frame_lengths_zero_and_fewer_real_tokens_than_k():
    """Lengths are clipped to [0, T] (no host sync); a video with fewer than k real tokens fills the
    selection with zero tokens, a video of 0 frames gives zeros, masked out of its visual tokens."""
    model = _model().eval()
    feats, text, text_mask = _inputs()
    with torch.no_grad():
        full = model(feats, text, text_mask)
        truth = float64_copy(model)(feats.double(), text.double(), text_mask.double())
        assert_within_bound(model(feats, text, text_mask, frame_lengths=torch.tensor([9, 4])), truth, full)
        refined = model.refine(feats, torch.tensor([1, 4]))  # 1 frame x 9 tokens < k = 12
        real = refined.index[0] < P
        assert real.sum() == P and refined.tokens[0, :K][~real].abs().max() == 0  # scale 1: zeros
        out, valid = model.visual_tokens(feats, torch.tensor([0, 4]), text=text, text_mask=text_mask)
    assert out[0].abs().max() == 0 and not valid[0].any() and valid[1].all()
    assert_within_bound(out[1], truth[1], full[1])
    loss = model.train()(feats, text, text_mask, frame_lengths=torch.tensor([0, 1])).square().mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bad_inputs_raise():
    model = _model()
    feats, _, _ = _inputs()
    with pytest.raises(ValueError, match="frame_features"):
        model(feats[..., :-1])
    with pytest.raises(ValueError, match="frame_lengths"):
        model(feats, frame_lengths=torch.tensor([4, 1, 2]))
    with pytest.raises(TypeError, match="frame_lengths"):
        model(feats, frame_lengths=torch.tensor([True, False]))
    with pytest.raises(ValueError, match="num_queries"):
        _model(num_queries=(4, 2))
