"""Video models built on the stquery ops (SPEC §4): tokenizers and the video LMM around them."""
from .classifier import VideoClassifier
from .common import LoRA, Router, grid_neighbourhood_masks, parameter_counts
from .linvt import LinVTTokenizer
from .temporal_pool import TemporalPoolAdapter
from .video_lmm import VideoLMM, VideoLMMOutput
from .video_qformer import VideoQFormer

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
