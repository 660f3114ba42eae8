"""The LLM head in the trainer (``model.kind: video_lmm``, docs/models.md §4.4 / docs/training.md §5) on tiny random models.

A random InstructBLIP (1-layer ViT width 24, 2-layer Q-Former, 1-layer Llama-style LM), a
word-level LLM tokenizer and Q-Former tokenizer (built offline with ``tokenizers``), all saved with
``save_pretrained`` to a temporary directory; a manifest of precomputed frame features.
"""
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from stquery.train import tasks as tasks_module
from stquery.train.cli import main
from stquery.train.config import load_config
from stquery.train.data import read_manifest
from stquery.train.trainer import seed_everything

from ..models.bounds import C_EPS, assert_within_eps
from ..models.tiny_models import informative_init
from .conftest import read_log

VISION_DIM, FRAMES, TOKENS_PER_FRAME = 24, 4, 17  # CLS + 4x4 patches
STEPS = 10
SPECIALS = ["[PAD]", "<s>", "</s>", "[UNK]"]
WORDS = ["question", ":", "options", "(", ")", "a", "b", "c", "answer", "which", "way", "does", "the", "shape",
         "move", "?", "what", "colour", "is", "it", "a", "clip", "of", "moving", "shapes", ".", "left", "right",
         "red", "blue", "green", "ball", "square", "user", "assistant"]


def _word_tokenizer(path: Path, vocab_size: int):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    assert len(vocab) <= vocab_size
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="[PAD]",
                                   unk_token="[UNK]")
    fast.save_pretrained(path)
    return fast


@pytest.fixture(scope="module")
def lmm_files(tmp_path_factory):
    """Tiny InstructBLIP + tokenizers + a features manifest (multiple-choice and open answers)."""
    from transformers import (InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipQFormerConfig,
                              InstructBlipVisionConfig, LlamaConfig)

    root = tmp_path_factory.mktemp("lmm")
    torch.manual_seed(0)
    vision = InstructBlipVisionConfig(hidden_size=VISION_DIM, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, image_size=16, patch_size=4)
    qformer = InstructBlipQFormerConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=48, encoder_hidden_size=VISION_DIM,
                                        max_position_embeddings=64, cross_attention_frequency=2)
    text = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                       bos_token_id=1, eos_token_id=2)
    cfg = InstructBlipConfig(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                             text_config=text.to_dict(), num_query_tokens=4)
    model = InstructBlipForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.query_tokens.normal_(0, 0.5)
    # Larger weights than the 0.02 init, so that the visual tokens visibly steer the answer logits.
    informative_init(model.language_projection, 0.5)
    informative_init(model.language_model, 0.3)
    model.save_pretrained(root / "instructblip")
    _word_tokenizer(root / "instructblip", 64)  # the LLM tokenizer next to the weights
    _word_tokenizer(root / "instructblip" / "qformer_tokenizer", 50)

    g = torch.Generator().manual_seed(0)
    clips = {f"clip{i}": torch.randn(6, TOKENS_PER_FRAME, VISION_DIM, generator=g) for i in range(4)}
    save_file(clips, str(root / "features.safetensors"))
    records = [
        {"features": "features.safetensors#clip0", "question": "Which way does the shape move?",
         "options": ["left", "right"], "answer": "left", "task": "direction"},
        {"features": "features.safetensors#clip1", "question": "Which way does the shape move?",
         "options": ["left", "right"], "answer": "right", "task": "direction"},
        {"features": "features.safetensors#clip2", "context": "A clip of moving shapes.",
         "question": "What colour is the ball?", "answer": "red ball", "task": "open"},
        {"features": "features.safetensors#clip3", "question": "What colour is the square?",
         "answer": "blue square", "task": "open"},
    ]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def _config(root: Path, tmp_path: Path, name: str = "run", **model) -> Path:
    cfg = {
        "seed": 0,
        "output_dir": str(tmp_path / name),
        "data": {"train": str(root / "train.jsonl"), "val": str(root / "train.jsonl"), "frames": FRAMES},
        "model": {"instructblip": str(root / "instructblip"), "features_only": True, "tokenizer_kind": "qformer",
                  "temporal": True, "dar": True, "options": {"lora_rank": 4, "max_frames": 8}, **model},
        # One batch of all 4 clips per step: the same batch every step.
        "train": {"epochs": STEPS, "batch_size": 4, "lr": 3.0e-2, "scheduler": "constant", "log_every": 1,
                  "progress": False, "threads": 1, "eval_every_epoch": False},
        "eval": {"batch_size": 4, "max_new_tokens": 4},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_video_lmm_is_the_default_kind():
    configs = Path(__file__).resolve().parents[2] / "configs"
    assert load_config()["model"]["kind"] == "video_lmm"
    assert load_config(configs / "moving_shapes.yaml")["model"]["kind"] == "shapes_classifier"
    example = load_config(configs / "video_lmm_example.yaml")
    assert example["model"]["kind"] == "video_lmm" and example["model"]["tokenizer_kind"] == "qformer"
    with pytest.raises(ValueError, match="tokenizer_kind"):
        load_config(None, ["model.tokenizer_kind=perceiver"])


def test_prompt_labels_and_padding(lmm_files, tmp_path):
    cfg = load_config(_config(lmm_files, tmp_path))
    records = read_manifest(cfg["data"]["train"]).records
    task = tasks_module.build_task_model(cfg, records)
    tok = task.tokenizer
    ids, mask, labels = task.encode(records, with_answers=True)
    for i, r in enumerate(records):
        n = int(mask[i].sum())
        assert mask[i, :n].all() and not mask[i, n:].any()  # right-padded for training
        answer = labels[i][labels[i] != -100].tolist()
        assert answer[-1] == tok.eos_token_id
        assert tok.decode(answer, skip_special_tokens=True).strip() == r.answer
        assert (labels[i, n:] == -100).all()
        prompt = tok.decode(ids[i, :n][labels[i, :n] == -100], skip_special_tokens=True)
        assert prompt.endswith("answer :") and r.question.lower().split()[0] in prompt
        if r.options:
            assert "( a ) left ( b ) right" in prompt
    gen_ids, gen_mask, none = task.encode(records, with_answers=False)
    assert none is None and gen_mask[:, -1].all()  # left-padded for generation
    assert (gen_ids[gen_mask == 0] == task.pad_id).all()
    qids, qmask = task.encode_qformer(records)
    assert qids.shape[0] == 4 and qmask.shape == qids.shape


def test_train_then_evaluate(lmm_files, tmp_path, monkeypatch, capsys):
    cfg_path = _config(lmm_files, tmp_path)
    built = []
    original = tasks_module.build_task_model

    def capture(cfg, records):
        model = original(cfg, records)
        built.append(model)
        return model

    monkeypatch.setattr(tasks_module, "build_task_model", capture)
    main(["train", str(cfg_path)])
    monkeypatch.undo()
    trained = built[0]
    out = tmp_path / "run"

    # Loss: finite, decreasing on the repeated batch.
    losses = [r["loss"] for r in read_log(out, "train")]
    assert len(losses) == STEPS and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] * 0.8, losses

    # Only the trainable parameters (VideoQFormer LoRA / routers / e_t / e_s) moved.
    cfg = load_config(cfg_path)
    seed_everything(cfg["seed"])
    fresh = original(cfg, read_manifest(cfg["data"]["train"]).records)
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("lmm.video_tokenizer.") for n in trainable)
    assert all(any(k in n for k in ("lora", "router", "e_t", "e_s")) for n in trainable), sorted(trainable)
    after = dict(trained.named_parameters())
    changed = set()
    for n, p in fresh.named_parameters():
        if not torch.equal(p, after[n]):
            changed.add(n)
    assert changed and changed <= trainable, sorted(changed - trainable)
    assert {n for n in trainable if "lora" in n} & changed

    # The checkpoint holds exactly the trainable weights.
    ckpt_dir = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    weights = load_file(str(ckpt_dir / "trainable.safetensors"))
    assert set(weights) == trainable
    for n, w in weights.items():
        torch.testing.assert_close(w, after[n].detach())

    # Evaluation: generation, then accuracy (multiple choice and open) and ROUGE-L / METEOR (open).
    final = read_log(out, "eval")[-1]
    capsys.readouterr()
    main(["evaluate", str(cfg_path), "--checkpoint", str(out)])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["n"] == 4 and 0.0 <= metrics["accuracy"] <= 1.0
    assert set(metrics["tasks"]) == {"direction", "open"}
    assert 0.0 <= metrics["rouge_l"] <= 1.0 and 0.0 <= metrics["meteor"] <= 1.0
    assert "rouge_l" not in metrics["tasks"]["direction"] and "meteor" in metrics["tasks"]["open"]
    for key in ("accuracy", "rouge_l", "meteor"):
        assert metrics[key] == pytest.approx(final[key])  # evaluate reloads exactly what training saw


@pytest.mark.parametrize("kind,options", [("pool", {}), ("linvt", {"k": 8, "num_queries": [4, 2, 2],
                                                                    "svr_layers": 1, "tta_layers": 1,
                                                                    "num_heads": 2})])
def test_other_video_tokenizers_from_a_plain_lm(lmm_files, tmp_path, kind, options):
    """``model.language_model`` (a causal LM directory) + LinVT / pooling over precomputed features."""
    from transformers import InstructBlipForConditionalGeneration

    from stquery.train.lmm import build_lmm_task

    lm_dir = tmp_path / "lm"
    InstructBlipForConditionalGeneration.from_pretrained(
        str(lmm_files / "instructblip"), local_files_only=True).language_model.save_pretrained(lm_dir)
    cfg = load_config(_config(lmm_files, tmp_path), [
        "model.instructblip=", f"model.language_model={lm_dir}", f"model.tokenizer={lmm_files / 'instructblip'}",
        f"model.tokenizer_kind={kind}"])
    cfg["model"]["options"] = dict(options, visual_dim=VISION_DIM)  # replaces the Q-Former options
    task = build_lmm_task(cfg)
    from stquery.train.data import VideoQADataset, collate

    records = read_manifest(cfg["data"]["train"]).records
    ds = VideoQADataset(records, frames=FRAMES)
    batch = collate([ds[i] for i in range(4)])
    loss = task(batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(n.startswith(("lmm.video_tokenizer.", "lmm.projection.")) for n, p in task.named_parameters()
               if p.requires_grad)
    task.eval()
    answers = task.predict(batch)
    assert len(answers) == 4 and all(isinstance(a, str) for a in answers)


def test_activation_checkpointing_recomputes_the_frozen_llm(lmm_files, tmp_path):
    from stquery.train.data import VideoQADataset, collate

    cfg = load_config(_config(lmm_files, tmp_path))
    records = read_manifest(cfg["data"]["train"]).records
    seed_everything(0)
    task = tasks_module.build_task_model(cfg, records).train()
    batch = collate([VideoQADataset(records, frames=FRAMES)[i] for i in range(4)])

    def loss_and_grads():
        task.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same Q-Former dropout in both passes
        loss = task(batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = loss_and_grads()
    task.set_activation_checkpointing(True)
    calls = []
    from transformers.modeling_layers import GradientCheckpointingLayer

    for layer in task.lmm.language_model.modules():
        if isinstance(layer, GradientCheckpointingLayer):
            inner = layer._gradient_checkpointing_func
            layer._gradient_checkpointing_func = lambda *a, _f=inner, **k: calls.append(1) or _f(*a, **k)
    ckpt_loss, ckpt_grads = loss_and_grads()
    assert calls, "the LLM decoder layers were not checkpointed"
    assert not any(m.training for m in task.lmm.language_model.modules())  # back to eval: no dropout
    torch.testing.assert_close(ckpt_loss, plain_loss)
    assert set(ckpt_grads) == set(plain_grads)
    for n in plain_grads:
        torch.testing.assert_close(ckpt_grads[n], plain_grads[n], rtol=1e-5, atol=1e-7)


def test_decoded_frames_through_the_frozen_vit(lmm_files, tmp_path):
    """Without ``features_only`` the InstructBLIP ViT encodes decoded frames (``visual_kind: pixels``)."""
    cfg = load_config(_config(lmm_files, tmp_path, features_only=False))
    records = read_manifest(cfg["data"]["train"]).records
    task = tasks_module.build_task_model(cfg, records)
    assert task.lmm.vision_model is not None
    batch = {"records": records, "visual_kind": "pixels", "visual": torch.randn(4, FRAMES, 3, 16, 16),
             "frame_lengths": torch.full((4,), FRAMES)}
    assert torch.isfinite(task(batch))
    task.eval()
    assert len(task.predict(batch)) == 4
    no_vit = tasks_module.build_task_model(load_config(_config(lmm_files, tmp_path)), records)
    with pytest.raises(ValueError, match="features"):
        no_vit(batch)


def _no_dropout(build):
    def wrapped(cfg, records):
        model = build(cfg, records)
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        return model

    return wrapped


def test_token_loss_does_not_depend_on_the_accumulation_split(lmm_files, tmp_path, monkeypatch):
    """One optimizer step on all 4 clips (answers of 2 and 3 tokens with EOS): grad_accum 1 and 2
    give the gradient of the mean over all the batch's answer tokens (before: a mean of per-micro-
    batch token means, which weights tokens by how the batch was split)."""
    from stquery.train.data import VideoQADataset, collate

    original = tasks_module.build_task_model
    monkeypatch.setattr(tasks_module, "build_task_model", _no_dropout(original))
    grads = {}

    def run(accum):
        captured = []
        real_clip = torch.nn.utils.clip_grad_norm_

        def capture(params, max_norm, *a, **k):
            captured.append([p.grad.detach().clone() for p in params])
            return real_clip(params, max_norm, *a, **k)

        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", capture)
        cfg = _config(lmm_files, tmp_path, f"accum{accum}")
        main(["train", str(cfg), "--set", "train.epochs=1", "--set", f"train.grad_accum={accum}",
              "--set", "train.max_grad_norm=1.0e9", "--set", "data.val=", "--set", "train.lr=1.0e-4"])
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", real_clip)
        assert len(captured) == 1
        grads[accum] = captured[0]
        return load_file(str(tmp_path / f"accum{accum}" / "checkpoints" / "step_000001" / "trainable.safetensors"))

    w1, w2 = run(1), run(2)
    # The expected gradient: the token-mean loss of the whole batch in one pass.
    cfg = load_config(_config(lmm_files, tmp_path))
    records = read_manifest(cfg["data"]["train"]).records
    seed_everything(cfg["seed"])
    task = _no_dropout(original)(cfg, records).train()
    task(collate([VideoQADataset(records, frames=FRAMES)[i] for i in range(4)])).backward()
    expected = [p.grad for p in task.parameters() if p.requires_grad]
    assert len(expected) == len(grads[1]) == len(grads[2])
    # The same float32 sums in another order: at most a few dozen roundings of the largest gradient
    # apart (a token weighting error would be off by a factor, not by roundings).
    truth = torch.cat([e.flatten() for e in expected]).double()
    for accum in (1, 2):
        got = torch.cat([g.flatten() for g in grads[accum]])
        assert_within_eps(got, truth, c=C_EPS, name=f"grad_accum={accum}")
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-6, atol=1e-6)


def test_qformer_prompt_keeps_its_end(lmm_files, tmp_path):
    """A context longer than the Q-Former's positions is cut from the left: the question, options
    and "Answer:" survive (before: cut from the right, losing them)."""
    cfg = load_config(_config(lmm_files, tmp_path))
    records = read_manifest(cfg["data"]["train"]).records
    task = tasks_module.build_task_model(cfg, records)
    long = records[0].__class__(**{**records[0].__dict__, "context": " ".join(["clip of moving shapes ."] * 40)})
    qids, qmask = task.encode_qformer([long, records[1]])
    assert qids.shape[1] == task.qformer_max_len == 64
    text = task.qformer_tokenizer.decode(qids[0], skip_special_tokens=True)
    assert text.endswith("question : which way does the shape move ? options : ( a ) left ( b ) right answer :"), text
    assert qids[0, 0] == task.qformer_tokenizer.bos_token_id or qids[0, 0] == qids[1, 0]  # special prefix kept


def test_bfloat16_checkpoints_keep_float32_trainable_weights(lmm_files, tmp_path, monkeypatch):
    """model.dtype bfloat16: the frozen LLM / Q-Former in bfloat16, every trainable weight (LoRA,
    routers, e_t, e_s) in float32, and one training step of lr 1e-4 moves them even where they are
    ~1 (bfloat16's spacing there, 2^-7, would swallow the update). float16 training is refused."""
    original = tasks_module.build_task_model
    start = {}

    def build(cfg, records):
        model = original(cfg, records)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    p.add_(1.0)
                    start[name] = p.detach().clone()
        start["model"] = model
        return model

    monkeypatch.setattr(tasks_module, "build_task_model", build)
    cfg_path = _config(lmm_files, tmp_path, "bf16", dtype="bfloat16")
    main(["train", str(cfg_path), "--set", "train.epochs=1", "--set", "train.lr=1.0e-4", "--set", "data.val="])
    model = start.pop("model")
    params = dict(model.named_parameters())
    assert start and set(start) == {n for n, p in params.items() if p.requires_grad}
    assert all(params[n].dtype == torch.float32 for n in start)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    for name, before in start.items():
        assert torch.isfinite(params[name]).all(), name
    lora = [n for n in start if "lora" in n]
    moved = [n for n in start if not torch.equal(params[n].detach(), start[n])]
    assert set(lora) <= set(moved), sorted(set(lora) - set(moved))
    with pytest.raises(ValueError, match="float16"):
        main(["train", str(_config(lmm_files, tmp_path, "fp16", dtype="float16"))])


@pytest.fixture(scope="module")
def family_dirs(lmm_files):
    """Saved tiny HF checkpoints of the two families, each with its LLM tokenizer (LLaVA's knows
    ``<image>`` as the model's image token id) and, for InstructBLIP-Video, a Q-Former tokenizer."""
    from tokenizers import AddedToken

    from ..models.tiny_models import PLACEHOLDER, tiny_instructblip_family, tiny_llava

    video = lmm_files / "instructblip_video"
    tiny_instructblip_family(video=True).save_pretrained(video)
    _word_tokenizer(video, 64)
    _word_tokenizer(video / "qformer_tokenizer", 50)
    llava = lmm_files / "llava"
    tiny_llava().save_pretrained(llava)
    tok = _word_tokenizer(llava, 64)
    # "<image>" at the model's image_token_id, never split by the word pre-tokenizer
    backend = tok.backend_tokenizer
    vocab = backend.get_vocab()
    filler = [f"[unused{i}]" for i in range(PLACEHOLDER - len(vocab))]
    backend.add_tokens(filler)
    backend.add_special_tokens([AddedToken("<image>", special=True, normalized=False)])
    tok.save_pretrained(llava)
    assert _load(llava).convert_tokens_to_ids("<image>") == PLACEHOLDER
    return {"instructblip_video": video, "llava": llava}


def _load(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


FAMILIES = [
    ("instructblip_video", "qformer", {"lora_rank": 4, "max_frames": 8}),
    ("llava", "pool", {}),
    ("llava", "linvt", {"k": 8, "num_queries": [4, 2, 2], "svr_layers": 1, "tta_layers": 1, "num_heads": 2}),
]


@pytest.mark.parametrize("family,kind,options", FAMILIES, ids=[f"{f}-{k}" for f, k, _ in FAMILIES])
def test_each_family_trains_from_its_checkpoint_and_resumes(family_dirs, lmm_files, tmp_path, family, kind, options):
    """``stquery train`` from a config naming a saved checkpoint directory: one step, stop, then
    ``--resume`` continues with the second; only the family's trainable weights are saved."""
    source = "instructblip" if family == "instructblip_video" else "llava"
    cfg_path = _config(lmm_files, tmp_path, "run", **{"instructblip": None, source: str(family_dirs[family]),
                                                       "tokenizer_kind": kind, "options": options})
    main(["train", str(cfg_path), "--set", "train.epochs=2", "--set", "train.stop_after=1", "--set", "data.val="])
    out = tmp_path / "run"
    first = load_file(str(out / "checkpoints" / "step_000001" / "trainable.safetensors"))
    main(["train", str(cfg_path), "--set", "train.epochs=2", "--set", "data.val=", "--resume"])
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000002"
    second = load_file(str(out / "checkpoints" / "step_000002" / "trainable.safetensors"))
    assert [r["step"] for r in read_log(out, "train")] == [1, 2]
    assert first.keys() == second.keys() and first
    assert any(not torch.equal(first[n], second[n]) for n in first)
    prefix = {"qformer": ("lmm.video_tokenizer.adapters.", "lmm.video_tokenizer.e_"),
              "pool": ("lmm.video_tokenizer.temporal_alignment.",),
              "linvt": ("lmm.video_tokenizer.",)}[kind]
    assert all(n.startswith(prefix) for n in first), sorted(first)

    # The prompt: LLaVA's template with <image>, which the visual tokens replace.
    cfg = load_config(cfg_path)
    task = tasks_module.build_task_model(cfg, read_manifest(cfg["data"]["train"]).records)
    ids, _, _ = task.encode(read_manifest(cfg["data"]["train"]).records[:1], with_answers=False)
    text = task.tokenizer.decode(ids[0])
    if family == "llava":
        assert text.startswith("<s> user : <image> question") and text.endswith("answer : assistant :"), text
    else:
        assert text.startswith("<s> question") and text.endswith("answer :"), text


def test_lmm_does_not_import_the_task_registry():
    """tasks.py (the registry of task models) imports lmm.py, never the other way round."""
    import ast

    import stquery.train.lmm as lmm_module

    tree = ast.parse(Path(lmm_module.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.split(".")[-1] == "tasks"}, imported
