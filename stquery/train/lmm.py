"""The LLM head (``model.kind: video_lmm``, SPEC §4.4) for the trainer: NOT WIRED YET.

:class:`stquery.models.VideoLMM` exists (``forward(input_ids, attention_mask, labels, pixel_values=
| frame_features=, qformer_input_ids=...)`` and ``generate``); what is missing here is the task
wrapper: prompt building (context, question, lettered options, "Answer:"), LLM and Q-Former
tokenisation (``AutoTokenizer`` from the local InstructBLIP directory and its
``qformer_tokenizer``), answer-only labels (``VideoLMM.answer_labels``), left-padded generation and
decoding for :func:`stquery.train.metrics.evaluate_predictions`. Until then this raises instead of
training something else silently.
"""
from __future__ import annotations


def build_lmm_task(cfg: dict):
    raise NotImplementedError(
        "model.kind=video_lmm: the trainer's LLM-head task wrapper (prompting, tokenisation, answer "
        "labels, generation) is not implemented yet; stquery.models.VideoLMM itself is available. "
        "Use model.kind=shapes_classifier for the moving-shapes demo."
    )
