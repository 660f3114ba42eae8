"""VideoClassifier over each tokenizer (the trainer's CPU demo head)."""
import torch
from transformers import InstructBlipQFormerModel

from stquery.models import LinVTTokenizer, TemporalPoolAdapter, VideoClassifier, VideoQFormer
from .tiny_models import NUM_QUERIES, VISION_DIM, qformer_config


def test_classifier_over_each_tokenizer():
    feats = torch.randn(2, 3, 17, VISION_DIM)
    lengths = torch.tensor([3, 2])
    tokenizers = [
        (VideoQFormer(InstructBlipQFormerModel(qformer_config(2)), torch.randn(NUM_QUERIES, 32)),
         dict(input_ids=torch.randint(1, 50, (2, 4)))),
        (LinVTTokenizer(VISION_DIM, num_heads=2, svr_layers=1, tta_layers=1, k=8, scales=(1, 2), num_queries=(2, 2)), {}),
        (TemporalPoolAdapter(torch.nn.Linear(VISION_DIM, 16)), {}),
    ]
    for tokenizer, text in tokenizers:
        clf = VideoClassifier(tokenizer, num_classes=3)
        logits = clf(feats, lengths, **text)
        assert logits.shape == (2, 3)
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
        assert clf.head.weight.grad is not None
        assert all(p.grad is None for p in clf.parameters() if not p.requires_grad)
