"""Tiny random configs for the model tests (CPU, float32, seconds)."""
import torch
from transformers import InstructBlipQFormerConfig

VISION_DIM = 24  # Dv, the frame-token width
NUM_QUERIES = 8


def qformer_config(cross_attention_frequency: int = 1, num_hidden_layers: int = 2) -> InstructBlipQFormerConfig:
    return InstructBlipQFormerConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=num_hidden_layers, num_attention_heads=4,
        intermediate_size=48, encoder_hidden_size=VISION_DIM, max_position_embeddings=32,
        cross_attention_frequency=cross_attention_frequency,
    )


def randomize_trainable(module: torch.nn.Module, std: float = 0.1) -> None:
    """Move every trainable parameter off its (often zero) init so each one affects the output."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def informative_init(module: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Re-draw Linear and Embedding weights with a larger spread than transformers' 0.02 init, so
    attention is far from uniform and every path (e.g. one frame into another) is clearly visible."""
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
            elif isinstance(m, torch.nn.Embedding):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
    return module
