"""One ``VideoQFormer`` layer (docs/models.md §4.1), forward + backward: spatial self-attention over
[queries; text], cross-attention to the frame's visual tokens, temporal DAR self-attention and the
feed-forward blocks, gradients to the trainable weights (LoRA, routers, e_t, e_s).

Parametrized over stquery's backends (forced through ``$STQUERY_BACKEND``: the model has no
``backend=`` argument). There is no peer row: the model is made of the ops whose peers the other
bench files measure. GPU: InstructBLIP's Q-Former width (D = 768, 12 heads, 32 queries, 257 visual
tokens of width 1408, 32 text tokens), B = 8 videos of T = 16 frames; CPU: a tiny layer.
"""
import pytest
import torch
from transformers import InstructBlipQFormerConfig

from stquery.models import VideoQFormer
from stquery.profile.cases import backend_names

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32

if DEVICE.type == "cuda":
    CONFIG = dict(num_hidden_layers=1)  # InstructBLIP defaults: D = 768, 12 heads, encoder width 1408
    B, T, NV, N_TEXT, L = 8, 16, 257, 32, 32
else:
    CONFIG = dict(num_hidden_layers=1, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                  encoder_hidden_size=32, vocab_size=1000, max_position_embeddings=64)
    B, T, NV, N_TEXT, L = 1, 4, 16, 6, 8


@pytest.mark.parametrize("backend", backend_names())
def test_videoqformer_layer_fwd_bwd(benchmark, stquery_backend_env, backend):
    stquery_backend_env(backend)
    torch.manual_seed(0)
    cfg = InstructBlipQFormerConfig(**CONFIG)
    model = VideoQFormer.from_config(cfg, num_query_tokens=L, max_frames=max(T, 64)).to(DEVICE, DTYPE)
    features = torch.randn(B, T, NV, cfg.encoder_hidden_size, device=DEVICE, dtype=DTYPE)
    input_ids = torch.randint(0, cfg.vocab_size, (B, N_TEXT), device=DEVICE)
    params = [p for p in model.parameters() if p.requires_grad]
    grad = torch.randn(B, T, L, cfg.hidden_size, device=DEVICE, dtype=DTYPE)

    def step():
        out = model(features, input_ids)
        grads = torch.autograd.grad(out, params, grad, allow_unused=True)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)
        return grads

    from stquery import BackendUnavailable

    try:
        step()  # compile / build once, and find out whether this backend runs here
    except BackendUnavailable as e:
        pytest.skip(f"stquery-{backend}: {e}")
    benchmark.group = "VideoQFormer layer fwd+bwd"
    benchmark.extra_info.update(backend=backend, B=B, T=T, L=L, Nv=NV, text=N_TEXT, D=cfg.hidden_size,
                                device=str(DEVICE), dtype=str(DTYPE).replace("torch.", ""))
    benchmark(step)
