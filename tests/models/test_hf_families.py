"""The video tokenizers on the HF image LMMs they were made for, against the HF models themselves.

Tiny random configs of each HF class (tests/models/tiny_models.py), nothing downloaded. Every
comparison is float32 against the HF model's float64 run, within twice the HF float32 run's own
error plus a few eps (tests/models/bounds.py).
"""
import pytest
import torch

from stquery.models import LinVTTokenizer, TemporalPoolAdapter, VideoLMM, VideoQFormer

from .bounds import assert_within_bound, float64_copy
from .test_linvt import assert_convex_combinations
from .tiny_models import (
    IMAGE_SIZE, LM_VOCAB, NUM_QUERIES, PLACEHOLDER, generator, informative_init, randomize_trainable, tiny_instructblip_family,
    tiny_llava,
)

B, T, N_TEXT = 2, 3, 6
PATCHES = (IMAGE_SIZE // 4) ** 2  # 16 patch tokens per frame (CLS dropped by LLaVA's "default")


def _pixels(frames=T):
    g = generator(7)
    return torch.randn(B, frames, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)


def _text(n=N_TEXT, lo=3):
    g = generator(8)
    return torch.randint(lo, PLACEHOLDER, (B, n), generator=g)


def _qformer_text():
    ids = torch.randint(1, 50, (B, 4), generator=generator(9))
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0
    return ids, mask


# ---------------------------------------------------------------------------------------------
# InstructBLIP-Video and InstructBLIP: VideoQFormer with temporal attention off is the HF model


@pytest.fixture(scope="module")
def instructblip_video():
    return tiny_instructblip_family(video=True)


def _hf_visual(hf, pixel_values, qids, qmask):
    """The projected query tokens HF feeds its LLM: ``[B, T·L, K]``, frame-major."""
    if type(hf).__name__.startswith("InstructBlipVideo"):
        return hf.get_video_features(pixel_values, qformer_input_ids=qids, qformer_attention_mask=qmask).pooler_output
    frames = pixel_values.shape[1]  # the image model, frame by frame
    out = hf.get_image_features(pixel_values.flatten(0, 1), qformer_input_ids=qids.repeat_interleave(frames, 0),
                                qformer_attention_mask=qmask.repeat_interleave(frames, 0)).pooler_output
    return out.reshape(pixel_values.shape[0], -1, out.shape[-1])


@pytest.mark.parametrize("video", [True, False], ids=["instructblip_video", "instructblip"])
def test_instructblip_visual_tokens_equal_the_hf_models(video, instructblip_video):
    hf = instructblip_video if video else tiny_instructblip_family(video=False)
    hf64 = float64_copy(hf)
    lmm = VideoLMM.from_instructblip(hf, tokenizer_kwargs=dict(temporal=False, dar=False)).eval()
    assert lmm.video_tokenizer.qformer is hf.qformer and lmm.projection is hf.language_projection
    assert lmm.vision_model is hf.vision_model and lmm.language_model is hf.language_model
    assert lmm.placeholder_token_id == PLACEHOLDER
    pixel_values, (qids, qmask) = _pixels(), _qformer_text()
    with torch.no_grad():
        ours, valid = lmm.visual_embeds(pixel_values=pixel_values, qformer_input_ids=qids, qformer_attention_mask=qmask)
        same = _hf_visual(hf, pixel_values, qids, qmask)
        truth = _hf_visual(hf64, pixel_values.double(), qids, qmask)
    assert ours.shape == (B, T * NUM_QUERIES, hf.config.text_config.hidden_size) and valid.all()
    assert_within_bound(ours, truth, same, name="visual tokens")


def test_instructblip_video_logits_equal_the_hf_model(instructblip_video):
    """The processor's layout (L·T ``<video>`` tokens, then BOS and the prompt) gives the same LLM
    input and next-token logits as HF; without the placeholders the tokens go to the same place."""
    hf = instructblip_video
    hf64 = float64_copy(hf)
    lmm = VideoLMM.from_instructblip(hf, tokenizer_kwargs=dict(temporal=False, dar=False)).eval()
    pixel_values, (qids, qmask) = _pixels(), _qformer_text()
    text = torch.cat([torch.ones(B, 1, dtype=torch.long), _text()], dim=1)  # BOS + prompt
    input_ids = torch.cat([torch.full((B, NUM_QUERIES * T), PLACEHOLDER), text], dim=1)
    mask = torch.ones_like(input_ids)
    kw = dict(qformer_input_ids=qids, qformer_attention_mask=qmask)
    with torch.no_grad():
        ours = lmm(input_ids, mask, pixel_values=pixel_values, **kw).logits
        same = hf(pixel_values=pixel_values, input_ids=input_ids, attention_mask=mask, **kw).logits
        truth = hf64(pixel_values=pixel_values.double(), input_ids=input_ids, attention_mask=mask, **kw).logits
        prefix = lmm(text, torch.ones_like(text), pixel_values=pixel_values, **kw).logits
    assert ours.shape == same.shape == (B, input_ids.shape[1], LM_VOCAB)
    assert_within_bound(ours[:, -1], truth[:, -1], same[:, -1], name="next-token logits")
    assert_within_bound(ours, truth, same, name="logits")
    torch.testing.assert_close(prefix, ours, rtol=0, atol=0)


def test_instructblip_video_with_temporal_attention_differs_and_trains_only_the_adapters(instructblip_video):
    hf = instructblip_video
    frozen = {id(p) for p in hf.parameters()}
    image = VideoLMM.from_instructblip(hf, tokenizer_kwargs=dict(temporal=False, dar=False)).eval()
    pixel_values, (qids, qmask) = _pixels(), _qformer_text()
    kw = dict(pixel_values=pixel_values, qformer_input_ids=qids, qformer_attention_mask=qmask)
    with torch.no_grad():
        reference = image.visual_embeds(**kw)[0]
    lmm = VideoLMM.from_instructblip(hf, tokenizer_kwargs=dict(temporal=True, dar=True)).train()
    tokens = lmm.visual_embeds(**kw)[0]  # LoRA at init: only the temporal attention differs
    assert (tokens - reference).abs().max() > 1e-3 * reference.abs().max()

    input_ids = _text(N_TEXT + 2)
    labels = VideoLMM.answer_labels(input_ids, torch.arange(N_TEXT + 2)[None].expand(B, -1) >= N_TEXT)
    randomize_trainable(lmm.video_tokenizer)
    lmm(input_ids, labels=labels, **kw).loss.backward()
    trainable = {n for n, p in lmm.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("video_tokenizer.adapters.", "video_tokenizer.e_")) for n in trainable)
    for name, p in lmm.named_parameters():
        if id(p) in frozen:
            assert not p.requires_grad and p.grad is None, name
    assert all(lmm.get_parameter(n).grad is not None for n in trainable)
    for p in hf.parameters():
        p.grad = None


def test_video_qformer_from_instructblip_video_maps_the_qformer_weights(instructblip_video):
    hf = instructblip_video
    qf = VideoQFormer.from_instructblip(hf, temporal=False, dar=False)
    assert qf.qformer is hf.qformer and torch.equal(qf.query_tokens, hf.query_tokens)
    own = {k for k in qf.state_dict() if k.startswith("qformer.")}
    assert own == {f"qformer.{k}" for k in hf.qformer.state_dict()}
    with pytest.raises(TypeError, match="model_or_path"):
        VideoQFormer.from_instructblip(tiny_llava())


# ---------------------------------------------------------------------------------------------
# LLaVA: RED-VILLM's pooling adapter initialised from the projector, LinVT over projected tokens


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


def _hf_image_features(hf, pixel_values):
    """LLaVA's own projected image features of each frame: ``[B·T, N, K]``."""
    return torch.stack(hf.get_image_features(pixel_values.flatten(0, 1)).pooler_output)


@pytest.mark.parametrize("variant", ["llava", "llava_full_multilayer", "llava_next"])
def test_llava_pool_at_one_frame_gives_llavas_image_features(variant, llava):
    hf = {"llava": lambda: llava, "llava_full_multilayer": lambda: tiny_llava(vision_feature_layer=[-2, -1], strategy="full"),
          "llava_next": lambda: tiny_llava(next_version=True)}[variant]()
    lmm = VideoLMM.from_llava(hf, tokenizer="pool").eval()
    adapter = lmm.video_tokenizer
    projector = hf.model.multi_modal_projector
    assert isinstance(adapter, TemporalPoolAdapter) and adapter.alignment is projector
    assert lmm.vision_model is hf.model.vision_tower and lmm.placeholder_token_id == PLACEHOLDER
    # The temporal module starts as the projector's copy.
    ours_w, theirs_w = adapter.temporal_alignment.state_dict(), projector.state_dict()
    assert ours_w.keys() == theirs_w.keys() and all(torch.equal(ours_w[k], theirs_w[k]) for k in ours_w)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(adapter.temporal_alignment.parameters(), projector.parameters()))

    pixel_values = _pixels(frames=1)
    if variant == "llava_next":
        same = hf.model.multi_modal_projector(hf.model.vision_tower(pixel_values.flatten(0, 1),
                                              output_hidden_states=True).hidden_states[-2][:, 1:])
        hf64 = float64_copy(hf)
        truth = hf64.model.multi_modal_projector(hf64.model.vision_tower(pixel_values.flatten(0, 1).double(),
                                                 output_hidden_states=True).hidden_states[-2][:, 1:])
    else:
        with torch.no_grad():
            same = _hf_image_features(hf, pixel_values)
            truth = _hf_image_features(float64_copy(hf), pixel_values.double())
    with torch.no_grad():
        tokens, valid = lmm.visual_embeds(pixel_values=pixel_values)
    n = same.shape[1]
    assert tokens.shape == (B, 1 + n, hf.config.text_config.hidden_size) and valid.all()
    assert_within_bound(tokens[:, 1:], truth.detach(), same.detach(), name="spatial tokens")
    # At T = 1 the temporal token is the projected mean of the frame's tokens, through the copy.
    with torch.no_grad():
        feats = lmm.encode_frames(pixel_values)[:, :, 1 if lmm.drop_cls else 0:]
        assert_within_bound(tokens[:, :1], float64_copy(projector)(feats.double().mean(2)), projector(feats.mean(2)),
                            name="temporal token")


def test_llava_pool_trains_only_the_temporal_copy(llava):
    lmm = VideoLMM.from_llava(llava, tokenizer="pool").train()
    assert not lmm.language_model.training
    trainable = {n for n, p in lmm.named_parameters() if p.requires_grad}
    assert trainable == {f"video_tokenizer.temporal_alignment.{n}" for n, _ in
                         lmm.video_tokenizer.temporal_alignment.named_parameters()}
    input_ids = torch.cat([_text(2), torch.full((B, 1), PLACEHOLDER), _text(N_TEXT)], dim=1)
    labels = VideoLMM.answer_labels(input_ids, torch.arange(input_ids.shape[1])[None].expand(B, -1) >= 6)
    out = lmm(input_ids, labels=labels, pixel_values=_pixels())
    assert out.visual_tokens == T + PATCHES and out.logits.shape[1] == input_ids.shape[1] - 1 + T + PATCHES
    assert (out.labels[:, 2:2 + T + PATCHES] == -100).all()
    out.loss.backward()
    for name, p in lmm.named_parameters():
        if name in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_llava_placeholder_run_is_replaced_wherever_it_is(llava):
    """A processor's expanded ``<image>`` run (any length) and a single ``<image>`` give the same
    LLM input; rows may place it differently (left padding)."""
    lmm = VideoLMM.from_llava(llava, tokenizer="pool").eval()
    pixel_values = _pixels()
    before, after = _text(3), _text(4)
    one = torch.cat([before, torch.full((B, 1), PLACEHOLDER), after], dim=1)
    expanded = torch.cat([before, torch.full((B, PATCHES), PLACEHOLDER), after], dim=1)
    with torch.no_grad():
        a = lmm(one, pixel_values=pixel_values).logits
        b = lmm(expanded, pixel_values=pixel_values).logits
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        # Left-padded second row: the same tokens shifted right by 2 give the same logits there.
        shifted = torch.cat([torch.zeros(1, 2, dtype=torch.long), one[1:, :-2]], dim=1)
        ids = torch.cat([one[:1], shifted])
        mask = torch.ones_like(ids)
        mask[1, :2] = 0
        c = lmm(torch.cat([one[1:, :-2], one[1:, :-2]]), pixel_values=pixel_values).logits
        d = lmm(ids, mask, pixel_values=pixel_values).logits
        e = float64_copy(lmm)(torch.cat([one[1:, :-2], one[1:, :-2]]), pixel_values=pixel_values.double()).logits
    assert_within_bound(d[1, 2:], e[1], c[1], name="left-padded row")
    bad = one.clone()
    bad[0, 0] = PLACEHOLDER
    with pytest.raises(ValueError, match="contiguous run"):
        lmm(bad, pixel_values=pixel_values)


LINVT = dict(k=12, scales=(1, 2), num_queries=(4, 2), svr_layers=1, tta_layers=1, num_heads=2)


def test_llava_linvt_forward_backward_generate(llava):
    lmm = VideoLMM.from_llava(llava, tokenizer="linvt", tokenizer_kwargs=LINVT).train()
    tok = lmm.video_tokenizer
    assert isinstance(tok, LinVTTokenizer) and tok.dim == tok.text_dim == llava.config.text_config.hidden_size
    assert lmm.frame_projection is llava.model.multi_modal_projector
    trainable = {n for n, p in lmm.named_parameters() if p.requires_grad}
    assert trainable == {f"video_tokenizer.{n}" for n, _ in tok.named_parameters()}
    prompt = torch.cat([torch.ones(B, 1, dtype=torch.long), torch.full((B, 1), PLACEHOLDER), _text()], dim=1)
    input_ids = torch.cat([prompt, _text(2)], dim=1)
    labels = VideoLMM.answer_labels(input_ids, torch.arange(input_ids.shape[1])[None].expand(B, -1) >= prompt.shape[1])
    out = lmm(input_ids, labels=labels, pixel_values=_pixels(), frame_lengths=torch.tensor([T, 2]))
    assert out.visual_tokens == 6 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(lmm.get_parameter(n).grad is not None for n in trainable)
    assert all(p.grad is None for n, p in lmm.named_parameters() if n not in trainable)
    lmm.eval()
    generated = lmm.generate(prompt, pixel_values=_pixels(), max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape[0] == B and 1 <= generated.shape[1] <= 3


def test_llava_linvt_tokens_are_convex_combinations_of_the_projected_tokens(llava):
    """LinVT's linearity principle on LLaVA: each output token is a convex combination of the
    selected (gated, pooled) tokens of LLaVA's projector output, the tokens its LLM understands."""
    lmm = float64_copy(VideoLMM.from_llava(llava, tokenizer="linvt", tokenizer_kwargs=LINVT)).eval()
    informative_init(lmm.video_tokenizer, 0.3)
    pixel_values = _pixels().double()
    text = lmm.language_model.get_input_embeddings()(_text())
    with torch.no_grad():
        out, _ = lmm.visual_embeds(pixel_values=pixel_values, text=text)
        projected = lmm.frame_projection(lmm.encode_frames(pixel_values)[:, :, 1:])  # LLaVA's tokens
        refined = lmm.video_tokenizer.refine(projected)
    assert_convex_combinations(out, refined.tokens, LINVT["scales"], LINVT["k"], LINVT["num_queries"])


def test_llava_rejects_the_qformer_and_non_llava_models(llava):
    with pytest.raises(ValueError, match="tokenizer"):
        VideoLMM.from_llava(llava, tokenizer="qformer")
    with pytest.raises(TypeError, match="LLaVA-style"):
        VideoLMM.from_llava(tiny_instructblip_family(video=True))
