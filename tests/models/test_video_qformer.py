"""VideoQFormer (docs/models.md §4.1): equivalence with the image Q-Former, temporal reuse, gradients, padding."""
import inspect

import pytest
import torch
from transformers import InstructBlipQFormerConfig, InstructBlipQFormerModel

from stquery.models import VideoQFormer

from .bounds import assert_within_bound, assert_within_eps, float64_copy
from .tiny_models import NUM_QUERIES, VISION_DIM, informative_init, qformer_config, randomize_trainable

B, T, NV, N_TEXT = 2, 4, 17, 5  # 17 = CLS + 4×4 patch grid


def _inputs(batch=B, frames=T):
    feats = torch.randn(batch, frames, NV, VISION_DIM)
    ids = torch.randint(1, 50, (batch, N_TEXT))
    mask = torch.ones(batch, N_TEXT, dtype=torch.long)
    mask[-1, 3:] = 0  # text padding in the last sample
    return feats, ids, mask


def _model(freq=1, std=0.3, **kw) -> VideoQFormer:
    qformer = informative_init(InstructBlipQFormerModel(qformer_config(freq)), std=std)
    return VideoQFormer(qformer, torch.randn(1, NUM_QUERIES, 32), **kw)


def _hf_qformer(qformer, queries, feats, ids=None, full_mask=None):
    """The HF Q-Former's query outputs for one frame's (or a flattened batch's) visual tokens."""
    return qformer(
        input_ids=ids, attention_mask=full_mask, query_embeds=queries.expand(feats.shape[0], -1, -1),
        encoder_hidden_states=feats,
    ).last_hidden_state[:, :NUM_QUERIES]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("freq", [1, 2])
def test_equivalence_with_instructblip_qformer(freq, attn_implementation):
    model = _model(freq, std=0.3, temporal=False, dar=False).eval()
    model.qformer.set_attn_implementation(attn_implementation)
    qformer, queries = model.qformer, model.query_tokens
    assert isinstance(qformer, InstructBlipQFormerModel)
    qformer64, queries64 = float64_copy(qformer), queries.double()
    feats, ids, mask = _inputs()
    with torch.no_grad():
        out = model(feats, ids, mask)  # [B, T, L, D]
        assert out.shape == (B, T, NUM_QUERIES, 32)
        full_mask = torch.cat([torch.ones(B, NUM_QUERIES, dtype=torch.long), mask], dim=1)
        for t in range(T):
            same = _hf_qformer(qformer, queries, feats[:, t], ids, full_mask)
            truth = _hf_qformer(qformer64, queries64, feats[:, t].double(), ids, full_mask)
            assert_within_bound(out[:, t], truth, same, name=f"frame {t}")


def test_equivalence_without_text():
    model = _model(2, std=0.3, temporal=False, dar=False).eval()
    feats, _, _ = _inputs()
    with torch.no_grad():
        out = model(feats)
        same = _hf_qformer(model.qformer, model.query_tokens, feats.flatten(0, 1))
        truth = _hf_qformer(float64_copy(model.qformer), model.query_tokens.double(), feats.flatten(0, 1).double())
    assert_within_bound(out.flatten(0, 1), truth, same)


def test_frames_influence_each_other_only_with_temporal_attention():
    feats, ids, mask = _inputs()
    changed = feats.clone()
    changed[:, 0] += torch.randn_like(changed[:, 0])
    for temporal in (True, False):
        model = _model(2, temporal=temporal).eval()
        randomize_trainable(model)
        with torch.no_grad():
            diff = (model(feats, ids, mask)[:, 3] - model(changed, ids, mask)[:, 3]).abs().max()
        if temporal:
            assert diff > 1e-3
        else:
            assert diff == 0


def test_temporal_branch_reuses_spatial_modules_with_its_own_lora():
    model = _model(1).eval()
    randomize_trainable(model)
    calls = {}

    def counter(name):
        def hook(module, args, output):
            calls.setdefault(name, []).append(tuple(args[0].shape))
        return hook

    for i, layer in enumerate(model.qformer.encoder.layer):
        attn = layer.attention
        shared = {"query": attn.attention.query, "key": attn.attention.key, "value": attn.attention.value,
                  "dense": attn.output.dense, "LayerNorm": attn.output.LayerNorm}
        for name, mod in shared.items():
            mod.register_forward_hook(counter(f"{i}.{name}"))
        ad = model.adapters[i]
        for name in ("lora_q_spatial", "lora_v_spatial", "lora_q_temporal", "lora_v_temporal"):
            getattr(ad, name).register_forward_hook(counter(f"{i}.{name}"))
        assert ad.lora_q_temporal is not ad.lora_q_spatial and ad.lora_v_temporal is not ad.lora_v_spatial
    feats, ids, mask = _inputs()
    with torch.no_grad():
        model(feats, ids, mask)
    L, D = NUM_QUERIES, 32
    spatial, temporal = (B * T, L + N_TEXT, D), (B * T, L, D)
    for i in range(2):
        for name in ("query", "key", "value"):  # once on [queries; text] per frame, once on the queries over frames
            assert calls[f"{i}.{name}"] == [spatial, temporal], name
        assert len(calls[f"{i}.dense"]) == 2 and len(calls[f"{i}.LayerNorm"]) == 2
        assert calls[f"{i}.lora_q_spatial"] == [spatial] and calls[f"{i}.lora_v_spatial"] == [spatial]
        assert calls[f"{i}.lora_q_temporal"] == [temporal] and calls[f"{i}.lora_v_temporal"] == [temporal]
    # The temporal LoRA really acts on the temporal branch: changing it changes the output.
    with torch.no_grad():
        before = model(feats, ids, mask)
        model.adapters[0].lora_q_temporal.up.weight.add_(0.5)
        assert (model(feats, ids, mask) - before).abs().max() > 1e-4


def _expected_trainable(model: VideoQFormer) -> set[str]:
    names = {"e_t", "e_s"}
    for i, layer in enumerate(model.qformer.encoder.layer):
        for lora in ("lora_q_spatial", "lora_v_spatial", "lora_q_temporal", "lora_v_temporal"):
            names |= {f"adapters.{i}.{lora}.down.weight", f"adapters.{i}.{lora}.up.weight"}
        routers = ["router_temporal"] + (["router_cross"] if layer.has_cross_attention else [])
        for r in routers:
            names |= {f"adapters.{i}.{r}.{fc}.{w}" for fc in ("fc1", "fc2") for w in ("weight", "bias")}
    return names


def test_gradients_reach_exactly_the_trainable_parameters():
    model = _model(2).train()
    randomize_trainable(model)
    expected = _expected_trainable(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    feats, ids, mask = _inputs()
    model(feats, ids, mask).square().mean().backward()
    for name, p in model.named_parameters():
        if name in expected:
            g = p.grad[:T] if name == "e_t" else p.grad  # rows of e_t past T are unused
            assert g is not None and g.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert not model.query_tokens.requires_grad


def test_trainable_fraction_at_instructblip_size():
    config = InstructBlipQFormerConfig()  # the real InstructBLIP Q-Former (12 layers, D = 768)
    with torch.device("meta"):
        model = VideoQFormer.from_config(config, 32)
    trainable, total = model.parameter_counts()
    assert (trainable, total) == (3_331_638, 189_015_606)
    assert trainable / total < 0.02
    doc = inspect.getdoc(VideoQFormer)
    assert "3,331,638 trainable of 189,015,606" in doc and "1.763 %" in doc


@pytest.mark.parametrize("temporal,dar", [(True, True), (True, False)])
def test_frame_lengths_batch_equals_each_video_alone(temporal, dar):
    """A padded batch equals each video run alone: the float64 run alone is the truth, the float32
    run alone the same-dtype reference."""
    model = _model(2, temporal=temporal, dar=dar).eval()
    randomize_trainable(model)
    model64 = float64_copy(model)
    feats, ids, mask = _inputs()
    lengths = torch.tensor([4, 2])
    feats[1, 2:] = 100.0  # garbage in the padded frames must not leak
    with torch.no_grad():
        out = model(feats, ids, mask, frame_lengths=lengths)
        for b in range(B):
            n = int(lengths[b])
            alone = model(feats[b:b + 1, :n], ids[b:b + 1], mask[b:b + 1])
            truth = model64(feats[b:b + 1, :n].double(), ids[b:b + 1], mask[b:b + 1])
            assert_within_bound(out[b:b + 1, :n], truth, alone, name=f"video {b}")
            assert out[b, n:].abs().max() == 0 if n < T else True


def test_frame_lengths_are_clipped_and_zero_is_an_empty_video():
    """One rule with the ops: lengths clipped to [0, T]; 0 frames give zeros, and a video of 0
    frames in a batch changes nothing for the others."""
    model = _model(2).eval()
    randomize_trainable(model)
    feats, ids, mask = _inputs()
    with torch.no_grad():
        full = model(feats, ids, mask)
        truth = float64_copy(model)(feats.double(), ids, mask)
        assert_within_bound(model(feats, ids, mask, frame_lengths=torch.tensor([T + 3, T])), truth, full)
        out = model(feats, ids, mask, frame_lengths=torch.tensor([0, T]))
        assert out[0].abs().max() == 0
        assert_within_bound(out[1], truth[1], full[1])
        assert model(feats, ids, mask, frame_lengths=torch.tensor([-2, T]))[0].abs().max() == 0
        tokens, valid = model.visual_tokens(feats, torch.tensor([0, 2]), input_ids=ids, attention_mask=mask)
    assert not valid[0].any() and valid[1].sum() == 2 * NUM_QUERIES
    out = model.train()(feats, ids, mask, frame_lengths=torch.tensor([0, 3]))
    out.square().mean().backward()
    assert torch.isfinite(model.adapters[0].lora_q_temporal.down.weight.grad).all()


def test_load_state_dict_from_image_qformer():
    source = informative_init(InstructBlipQFormerModel(qformer_config(2)), std=0.2).eval()
    queries = torch.randn(1, NUM_QUERIES, 32)
    expected = VideoQFormer(source, queries, temporal=False, dar=False).eval()
    feats, ids, mask = _inputs()
    for prefix in ("", "qformer."):
        model = _model(2, temporal=False, dar=False).eval()
        state = {prefix + k: v for k, v in source.state_dict().items()}
        state["query_tokens"] = queries
        model.load_qformer_state_dict(state)
        with torch.no_grad():  # the same weights and computation: bitwise equal
            torch.testing.assert_close(model(feats, ids, mask), expected(feats, ids, mask), rtol=0, atol=0)
    # The model's own state dict round-trips, trainable parts included.
    model = _model(2)
    randomize_trainable(model)
    clone = _model(2)
    clone.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(clone.eval()(feats, ids, mask), model.eval()(feats, ids, mask), rtol=0, atol=0)


def test_bad_inputs_raise():
    model = _model(2).eval()
    feats, ids, mask = _inputs()
    with pytest.raises(ValueError, match="frame_features"):
        model(feats[0])
    with pytest.raises(ValueError, match="encoder_hidden_size"):
        model(torch.randn(B, T, NV, VISION_DIM + 1), ids, mask)
    with pytest.raises(ValueError, match="max_frames"):
        _model(2, max_frames=2)(feats, ids, mask)
    with pytest.raises(ValueError, match="frame_lengths"):
        model(feats, ids, mask, frame_lengths=torch.tensor([4]))
    with pytest.raises(TypeError, match="frame_lengths"):
        model(feats, ids, mask, frame_lengths=torch.tensor([4.0, 1.0]))


def test_bfloat16_forward_backward():
    model = _model(2, std=0.1)
    randomize_trainable(model)
    feats, ids, mask = _inputs()
    with torch.no_grad():
        truth = float64_copy(model).eval()(feats.double(), ids, mask)
    model = model.to(torch.bfloat16).train()
    out = model(feats.to(torch.bfloat16), ids, mask, frame_lengths=torch.tensor([4, 3]))
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    assert model.adapters[0].lora_q_temporal.down.weight.grad.dtype == torch.bfloat16
    model.eval()
    with torch.no_grad():
        low = model(feats.to(torch.bfloat16), ids, mask)
    # bfloat16 weights and activations: a few roundings of the largest value (measured: 1.4 eps)
    assert_within_eps(low, truth, c=8)


def test_spatial_routing_and_scale_mode():
    import stquery as stq

    model = _model(2, std=0.1, spatial_masks=[stq.masks.window(2), stq.masks.window(None)], dar_mode="scale").train()
    randomize_trainable(model)
    assert all(ad.router_spatial is not None for ad in model.adapters)
    feats, ids, mask = _inputs()
    out = model(feats, ids, mask, frame_lengths=torch.tensor([4, 3]))
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert model.adapters[1].router_spatial.fc1.weight.grad.abs().sum() > 0
    assert model.adapters[0].router_cross.fc1.weight.grad.abs().sum() > 0
