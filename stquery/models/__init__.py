"""Video models built on the stquery ops (docs/models.md §4): tokenizers and the video LMM around them.

Needs the ``[models]`` extra (transformers, safetensors): ``pip install 'stquery[models]'``.
"""
from .._optional import require
from .classifier import VideoClassifier
from .common import LoRA, Router, grid_neighbourhood_masks, parameter_counts
from .linvt import LinVTTokenizer
from .temporal_pool import TemporalPoolAdapter
from .video_lmm import VideoLMM, VideoLMMOutput
from .video_qformer import VideoQFormer

require("transformers", extra="models", feature="stquery.models")

__all__ = [
    "VideoQFormer",
    "LinVTTokenizer",
    "TemporalPoolAdapter",
    "VideoLMM",
    "VideoLMMOutput",
    "VideoClassifier",
    "LoRA",
    "Router",
    "grid_neighbourhood_masks",
    "parameter_counts",
]
