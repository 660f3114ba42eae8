"""VideoLMM (docs/models.md §4.4) on a tiny random InstructBLIP (ViT + Q-Former + Llama-style LM), CPU."""
import pytest
import torch
import torch.nn.functional as F

from stquery.models import LinVTTokenizer, TemporalPoolAdapter, VideoLMM, VideoQFormer

from .bounds import assert_within_bound, float64_copy

B, T, N_TEXT, N_ANSWER = 2, 3, 7, 2
TOKENIZER_KWARGS = {
    "qformer": {},
    "linvt": dict(k=12, num_queries=(4, 2, 2), svr_layers=1, tta_layers=1, num_heads=2),
    "pool": {},
}
TOKENIZER_TYPES = {"qformer": VideoQFormer, "linvt": LinVTTokenizer, "pool": TemporalPoolAdapter}


def _batch():
    pixel_values = torch.randn(B, T, 3, 16, 16)
    input_ids = torch.randint(3, 64, (B, N_TEXT))
    attention_mask = torch.ones_like(input_ids)
    answer = torch.zeros_like(input_ids, dtype=torch.bool)
    answer[:, -N_ANSWER:] = True
    labels = VideoLMM.answer_labels(input_ids, answer)
    qformer_input_ids = torch.randint(1, 50, (B, 4))
    return pixel_values, input_ids, attention_mask, labels, qformer_input_ids


@pytest.mark.parametrize("kind", ["qformer", "linvt", "pool"])
def test_forward_backward_generate(tiny_instructblip, kind):
    lmm = VideoLMM.from_instructblip(tiny_instructblip, tokenizer=kind, tokenizer_kwargs=TOKENIZER_KWARGS[kind])
    assert isinstance(lmm.video_tokenizer, TOKENIZER_TYPES[kind])
    lmm.train()
    assert not lmm.language_model.training and not lmm.vision_model.training
    pixel_values, input_ids, attention_mask, labels, qids = _batch()
    out = lmm(input_ids, attention_mask, labels, pixel_values=pixel_values, qformer_input_ids=qids)
    assert torch.isfinite(out.loss)
    assert out.logits.shape == (B, out.visual_tokens + N_TEXT, 64)

    # The loss is the cross-entropy of the answer tokens only (eq. 11-12; labels -100 elsewhere).
    logits = out.logits[:, out.visual_tokens:]  # text positions
    pred, target = logits[:, -N_ANSWER - 1:-1], input_ids[:, -N_ANSWER:]  # position i predicts token i + 1
    manual = F.cross_entropy(pred.reshape(-1, 64), target.reshape(-1))
    truth = F.cross_entropy(pred.reshape(-1, 64).double(), target.reshape(-1))
    assert_within_bound(out.loss.detach(), truth.detach(), manual.detach(), name="loss")

    out.loss.backward()
    trainable = {n for n, p in lmm.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("video_tokenizer.", "projection.")) for n in trainable)
    for name, p in lmm.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name
    assert any(lmm.get_parameter(n).grad is not None and lmm.get_parameter(n).grad.abs().sum() > 0 for n in trainable)

    generated = lmm.generate(
        input_ids[:, :-N_ANSWER], attention_mask[:, :-N_ANSWER], pixel_values=pixel_values,
        qformer_input_ids=qids, max_new_tokens=3, do_sample=False,
    )
    assert generated.shape[0] == B and 1 <= generated.shape[1] <= 3


def test_loss_ignores_non_answer_tokens(tiny_instructblip):
    lmm = VideoLMM.from_instructblip(tiny_instructblip, tokenizer="pool").eval()
    pixel_values, input_ids, attention_mask, labels, _ = _batch()
    out = lmm(input_ids, attention_mask, pixel_values=pixel_values)
    assert out.loss is None
    # Only the last token is an answer: the loss is exactly its cross-entropy, nothing from the
    # prompt, the visual tokens or the first text token (predicted from the last visual token).
    only_last = labels.clone()
    only_last[:, :-1] = -100
    loss = lmm(input_ids, attention_mask, only_last, pixel_values=pixel_values).loss
    _assert_cross_entropy(loss, out.logits[:, -2], input_ids[:, -1])
    # Prompt tokens can be anything: with the answer fixed, changing them changes the logits but
    # labels there stay -100, and the loss is still the answer cross-entropy of the new logits.
    changed = input_ids.clone()
    changed[:, :2] = (changed[:, :2] + 5) % 64
    out2 = lmm(changed, attention_mask, only_last, pixel_values=pixel_values)
    _assert_cross_entropy(out2.loss, out2.logits[:, -2], input_ids[:, -1])


def _assert_cross_entropy(loss, logits, target):
    """``loss`` is the cross-entropy of ``logits`` for ``target`` (float64 truth, float32 reference)."""
    with torch.no_grad():
        assert_within_bound(loss, F.cross_entropy(logits.double(), target), F.cross_entropy(logits, target), name="loss")


def test_padded_frames_change_nothing(tiny_instructblip):
    lmm = VideoLMM.from_instructblip(tiny_instructblip, tokenizer="qformer").eval()
    pixel_values, input_ids, attention_mask, labels, qids = _batch()
    lengths = torch.tensor([3, 2])
    with torch.no_grad():
        out = lmm(input_ids, attention_mask, labels, pixel_values=pixel_values, frame_lengths=lengths, qformer_input_ids=qids)
        alone = lmm(input_ids[1:], attention_mask[1:], labels[1:], pixel_values=pixel_values[1:, :2], qformer_input_ids=qids[1:])
        truth = float64_copy(lmm)(input_ids[1:], attention_mask[1:], labels[1:], pixel_values=pixel_values[1:, :2].double(),
                                  qformer_input_ids=qids[1:])
    assert_within_bound(out.logits[1:, -N_TEXT:], truth.logits[:, -N_TEXT:], alone.logits[:, -N_TEXT:])


def test_a_video_of_zero_frames_is_invisible(tiny_instructblip):
    """frame_lengths 0: no visual token is visible to the LLM; the text logits are those of the text
    alone (the LLM without any visual token), and the other video is unaffected."""
    lmm = VideoLMM.from_instructblip(tiny_instructblip, tokenizer="qformer").eval()
    pixel_values, input_ids, attention_mask, labels, qids = _batch()
    with torch.no_grad():
        out = lmm(input_ids, attention_mask, labels, pixel_values=pixel_values, frame_lengths=torch.tensor([0, 3]),
                  qformer_input_ids=qids)
        full = lmm(input_ids, attention_mask, labels, pixel_values=pixel_values, qformer_input_ids=qids)
        text_only = lmm.language_model(input_ids=input_ids[:1], attention_mask=attention_mask[:1]).logits
        text64 = float64_copy(lmm.language_model)(input_ids=input_ids[:1], attention_mask=attention_mask[:1]).logits
    assert torch.isfinite(out.loss)
    assert_within_bound(out.logits[:1, -N_TEXT:], text64, text_only, name="empty video")
    torch.testing.assert_close(out.logits[1:], full.logits[1:], rtol=0, atol=0)


def test_precomputed_frame_features(tiny_instructblip):
    lmm = VideoLMM.from_instructblip(tiny_instructblip, tokenizer="qformer").eval()
    pixel_values, input_ids, attention_mask, labels, qids = _batch()
    feats = lmm.encode_frames(pixel_values)
    assert feats.shape == (B, T, 17, 24)
    features_only = VideoLMM(lmm.language_model, lmm.video_tokenizer, lmm.projection).eval()
    with torch.no_grad():
        a = lmm(input_ids, attention_mask, labels, pixel_values=pixel_values, qformer_input_ids=qids).loss
        b = features_only(input_ids, attention_mask, labels, frame_features=feats, qformer_input_ids=qids).loss
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same computation
    with pytest.raises(ValueError, match="pixel_values"):
        features_only(input_ids, attention_mask, labels, pixel_values=pixel_values)


def test_load_from_local_paths(tiny_instructblip, tmp_path):
    pixel_values, input_ids, attention_mask, labels, qids = _batch()
    tiny_instructblip.save_pretrained(tmp_path / "instructblip")
    loaded = VideoLMM.from_instructblip(str(tmp_path / "instructblip"), tokenizer="qformer").eval()
    in_memory = VideoLMM.from_instructblip(tiny_instructblip, tokenizer="qformer").eval()
    with torch.no_grad():
        a = loaded(input_ids, attention_mask, labels, pixel_values=pixel_values, qformer_input_ids=qids).loss
        b = in_memory(input_ids, attention_mask, labels, pixel_values=pixel_values, qformer_input_ids=qids).loss
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same weights and computation

    # A plain causal LM by path (e.g. Vicuna) with precomputed features and a pooling tokenizer.
    tiny_instructblip.language_model.save_pretrained(tmp_path / "lm")
    adapter = TemporalPoolAdapter(torch.nn.Linear(24, 32), train_alignment=True)
    lmm = VideoLMM.from_pretrained(str(tmp_path / "lm"), adapter).eval()
    out = lmm(input_ids, attention_mask, labels, frame_features=torch.randn(B, T, 16, 24))
    assert torch.isfinite(out.loss) and out.visual_tokens == T + 16
