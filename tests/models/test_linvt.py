"""LinVTTokenizer (SPEC §4.2): temporal order, gate gradients, shapes, padding."""
import pytest
import torch

from stquery.models import LinVTTokenizer

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
    x = feats.reshape(B, T * P, C)
    selected = torch.gather(x, 1, idx[..., None].expand(B, K, C)) * torch.sigmoid(torch.gather(scores, 1, idx))[..., None]
    n1, n2 = K, -(-K // 2)
    assert refined.tokens.shape == (B, sum(-(-K // s) for s in SCALES), C)
    torch.testing.assert_close(refined.tokens[:, :n1], selected)  # scale 1
    torch.testing.assert_close(refined.tokens[:, n1:n1 + n2], selected.reshape(B, K // 2, 2, C).mean(2))  # scale 2


def test_outputs_are_linear_combinations_of_selected_tokens():
    # Linearity principle: with the scores fixed, every output token is a convex combination of
    # the gated selected tokens of its scale, so the output lies in their span.
    model = _model()
    feats, text, text_mask = _inputs()
    out = model(feats, text, text_mask)
    tokens = model.refine(feats).tokens
    start, o = 0, 0
    for s, m in zip(SCALES, QUERIES):
        n = -(-K // s)
        basis = tokens[:, start:start + n]  # [B, n, C]
        coef = torch.linalg.lstsq(basis.transpose(1, 2), out[:, o:o + m].transpose(1, 2)).solution  # [B, n, m]
        torch.testing.assert_close(coef.sum(1), torch.ones(B, m), atol=1e-4, rtol=0)  # weights sum to 1
        assert bool((coef > -1e-4).all())
        start, o = start + n, o + m


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
    feats, text, text_mask = _inputs()
    lengths = torch.tensor([4, 2])
    feats[1, 2:] = 50.0  # padded frames are never selected and never attended
    out = model(feats, text, text_mask, frame_lengths=lengths)
    for b in range(B):
        n = int(lengths[b])
        alone = model(feats[b:b + 1, :n], text[b:b + 1], text_mask[b:b + 1])
        torch.testing.assert_close(out[b:b + 1], alone, atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise():
    model = _model()
    feats, _, _ = _inputs()
    with pytest.raises(ValueError, match="frame_features"):
        model(feats[..., :-1])
    with pytest.raises(ValueError, match="frame_lengths"):
        model(feats, frame_lengths=torch.tensor([4, 1]))  # 1 frame × 9 tokens < k = 12
    with pytest.raises(ValueError, match="num_queries"):
        _model(num_queries=(4, 2))
