"""Tiny random configs for the model tests (CPU, float32, seconds).

Every random draw of the model tests derives from ``SEED`` (environment ``STQUERY_TEST_SEED``,
default 0), so a sweep over seeds re-draws weights and inputs alike:
``for s in $(seq 1 20); do STQUERY_TEST_SEED=$s pytest tests/models; done``.
"""
import os

import torch
from transformers import InstructBlipQFormerConfig

VISION_DIM = 24  # Dv, the frame-token width
NUM_QUERIES = 8
SEED = int(os.environ.get("STQUERY_TEST_SEED", "0"))


def generator(offset: int = 0) -> torch.Generator:
    """A CPU generator seeded from ``SEED``: one stream per use (``offset``)."""
    return torch.Generator().manual_seed(SEED * 1000 + offset)


def qformer_config(cross_attention_frequency: int = 1, num_hidden_layers: int = 2) -> InstructBlipQFormerConfig:
    return InstructBlipQFormerConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=num_hidden_layers, num_attention_heads=4,
        intermediate_size=48, encoder_hidden_size=VISION_DIM, max_position_embeddings=32,
        cross_attention_frequency=cross_attention_frequency,
    )


def randomize_trainable(module: torch.nn.Module, std: float = 0.1) -> None:
    """Move every trainable parameter off its (often zero) init so each one affects the output."""
    g = generator(1234)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def informative_init(module: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Re-draw Linear and Embedding weights with a larger spread than transformers' 0.02 init, so
    attention is far from uniform and every path (e.g. one frame into another) is clearly visible."""
    g = generator(99)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
            elif isinstance(m, torch.nn.Embedding):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
    return module


LM_VOCAB, LM_DIM = 64, 32
PLACEHOLDER = LM_VOCAB - 1  # the image / video token id of the tiny multimodal models
IMAGE_SIZE, PATCH = 16, 4  # 4 x 4 patches (+ CLS)


def _text_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=LM_VOCAB, hidden_size=LM_DIM, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def tiny_instructblip_family(video: bool = True, num_queries: int = NUM_QUERIES) -> torch.nn.Module:
    """A random ``InstructBlipVideoForConditionalGeneration`` (or the image ``InstructBlipForConditionalGeneration``):
    1-layer ViT (16×16 px → CLS + 16 tokens of width 24), 2-layer Q-Former (cross-attention every
    layer), 1-layer Llama-style LM; placeholder token ``PLACEHOLDER``. Weights spread wider than
    transformers' 0.02 init so that every path is visible in the output."""
    import transformers as tf

    prefix = "InstructBlipVideo" if video else "InstructBlip"
    vision = getattr(tf, f"{prefix}VisionConfig")(
        hidden_size=VISION_DIM, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH,
    )
    qformer = getattr(tf, f"{prefix}QFormerConfig")(**qformer_config(1).to_dict())
    token = {"video_token_index": PLACEHOLDER} if video else {"image_token_index": PLACEHOLDER}
    cfg = getattr(tf, f"{prefix}Config")(
        vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=_text_config().to_dict(),
        num_query_tokens=num_queries, **token,
    )
    torch.manual_seed(SEED)
    model = getattr(tf, f"{prefix}ForConditionalGeneration")(cfg).eval()
    with torch.no_grad():  # InstructBLIP initialises the queries to zero; make them informative
        model.query_tokens.normal_(0, 0.5)
    informative_init(model.qformer, 0.2)
    informative_init(model.language_projection, 0.3)
    informative_init(model.language_model, 0.3)
    return model


def tiny_llava(next_version: bool = False, vision_feature_layer=-2, strategy: str = "default") -> torch.nn.Module:
    """A random ``LlavaForConditionalGeneration`` (or ``LlavaNextForConditionalGeneration``): 2-layer
    CLIP ViT (16×16 px → CLS + 16 tokens of width 24), the 2-layer GELU projector 24 → 32 → 32,
    1-layer Llama-style LM; ``image_token_id = PLACEHOLDER``."""
    import transformers as tf

    vision = tf.CLIPVisionConfig(hidden_size=VISION_DIM, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH)
    kw = dict(vision_config=vision.to_dict(), text_config=_text_config().to_dict(), image_token_index=PLACEHOLDER,
              vision_feature_layer=vision_feature_layer, vision_feature_select_strategy=strategy)
    if next_version:
        kw["image_grid_pinpoints"] = [[IMAGE_SIZE, IMAGE_SIZE]]
        cfg, cls = tf.LlavaNextConfig(**kw), tf.LlavaNextForConditionalGeneration
    else:
        cfg, cls = tf.LlavaConfig(**kw), tf.LlavaForConditionalGeneration
    torch.manual_seed(SEED)
    model = cls(cfg).eval()
    informative_init(model.model.multi_modal_projector, 0.3)
    informative_init(model.model.language_model, 0.3)
    informative_init(model.lm_head, 0.3)
    return model
