"""Evaluation metrics (docs/training.md §5): accuracy, ROUGE-L and METEOR, all computed offline.

**Answer parsing** (:func:`parse_choice`), for records with ``options``:
1. normalise prediction and options (lower case, punctuation and surrounding spaces removed,
   a leading "answer:" / "the answer is" dropped);
2. an exact match to an option wins;
3. a leading option letter — "B", "(B)", "B.", "B)", "B:" — picks the B-th option (options are
   lettered A, B, C ... in manifest order, as in MVBench prompts);
4. otherwise the options that occur in the prediction as whole words, leaving out those inside a
   longer option also found ("sarcastic" inside "not sarcastic"); exactly one left: that one, more
   than one ("left or right"): unparsed;
5. nothing found: unparsed, counted wrong (and counted in ``unparsed``).
Open answers (no options): ``accuracy`` is exact match after normalisation (SQuAD-style:
articles removed as well).

**ROUGE-L**: ``rouge_score`` (Google's reference implementation), F-measure, Porter stemming,
averaged over the samples.

**METEOR**: ``nltk.translate.meteor_score`` (exact, Porter-stem and WordNet-synonym matching
stages, default parameters alpha 0.9, beta 3, gamma 0.5) on lower-cased whitespace tokens. The
synonym stage needs NLTK's WordNet corpus; nothing is ever downloaded: if ``nltk.data.find
("corpora/wordnet")`` fails, METEOR runs with the exact and stem stages only and the result says so
(``meteor_synonyms: False``). Scores are then slightly lower than with WordNet (synonym matches are
missed); install the corpus offline (``python -m nltk.downloader -d DIR wordnet`` on a machine with
access, then ``NLTK_DATA=DIR``) for the full metric.
"""
from __future__ import annotations

import re
import string
from collections import defaultdict

from .._optional import require

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_PREFIX = re.compile(r"^(the\s+)?(correct\s+)?(answer|option)\s*(is|:)?\s*", re.IGNORECASE)
# "(B)", "(b) ...", "B.", "B)", "B:" or a bare "B" (not "A cat", where "A" is an article).
_LETTER = re.compile(r"^(?:\(([A-Za-z])\)|([A-Z])[.):](?:\s|$)|([A-Z])$)")


def normalize(text: str, drop_articles: bool = False) -> str:
    text = _PREFIX.sub("", text.strip())
    text = _PUNCT.sub(" ", text.lower())
    if drop_articles:
        text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def parse_choice(prediction: str, options: list[str]) -> str | None:
    """The option a free-text prediction names, or None (see the module docstring)."""
    pred = normalize(prediction)
    norm = [normalize(o) for o in options]
    for o, n in zip(options, norm):
        if pred == n:
            return o
    stripped = _PREFIX.sub("", prediction.strip())
    m = _LETTER.match(stripped)
    if m:
        idx = ord((m.group(1) or m.group(2) or m.group(3)).upper()) - ord("A")
        if 0 <= idx < len(options):
            return options[idx]
    found = [(n, o) for o, n in zip(options, norm) if n and re.search(rf"(^|\s){re.escape(n)}(\s|$)", pred)]
    # An option inside a longer one that was also found does not count ("sarcastic" in "not sarcastic").
    kept = {o for n, o in found if not any(n != m and re.search(rf"(^|\s){re.escape(n)}(\s|$)", m) for m, _ in found)}
    return kept.pop() if len(kept) == 1 else None


def _wordnet():
    """NLTK's WordNet reader if its corpus is installed locally, else None. Never downloads."""
    try:
        import nltk

        nltk.data.find("corpora/wordnet")
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return wordnet
    except Exception:
        return None


class _NoSynonyms:
    """Stands in for WordNet when it is absent: the synonym stage then matches nothing."""

    @staticmethod
    def synsets(word, *args, **kwargs):
        return []


def rouge_l(predictions: list[str], references: list[str]) -> float:
    rouge_scorer = require("rouge_score.rouge_scorer", extra="train", feature="ROUGE-L")

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    if not predictions:
        return 0.0
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(predictions)


def meteor(predictions: list[str], references: list[str]) -> tuple[float, bool]:
    """Mean METEOR and whether the WordNet synonym stage was available."""
    meteor_score = require("nltk.translate.meteor_score", extra="train", feature="METEOR").meteor_score

    wn = _wordnet()
    if not predictions:
        return 0.0, wn is not None
    total = 0.0
    for p, r in zip(predictions, references):
        hyp, ref = normalize(p).split(), normalize(r).split()
        total += meteor_score([ref], hyp, wordnet=wn or _NoSynonyms()) if hyp and ref else 0.0
    return total / len(predictions), wn is not None


def evaluate_predictions(predictions: list[str], records: list) -> dict:
    """Metrics over ``predictions[i]`` for ``records[i]`` (``.answer``, ``.options``, ``.task``).

    Returns overall ``accuracy`` (``n``, ``unparsed``), ``rouge_l`` / ``meteor`` over the open-answer
    records (when there are any), and the same per ``task`` under ``"tasks"``.
    """
    def block(pairs):
        out: dict = {"n": len(pairs)}
        correct = unparsed = 0
        open_p, open_r = [], []
        for pred, rec in pairs:
            if rec.options:
                choice = parse_choice(pred, rec.options)
                unparsed += choice is None
                correct += choice == rec.answer
            else:
                correct += normalize(pred, True) == normalize(rec.answer, True)
                open_p.append(pred)
                open_r.append(rec.answer)
        out["accuracy"] = correct / max(1, len(pairs))
        out["unparsed"] = unparsed
        if open_p:
            out["rouge_l"] = rouge_l(open_p, open_r)
            out["meteor"], out["meteor_synonyms"] = meteor(open_p, open_r)
        return out

    pairs = list(zip(predictions, records))
    result = block(pairs)
    by_task = defaultdict(list)
    for pred, rec in pairs:
        if rec.task:
            by_task[rec.task].append((pred, rec))
    if by_task:
        result["tasks"] = {t: block(v) for t, v in sorted(by_task.items())}
    return result
