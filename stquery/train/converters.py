"""Converters from the official annotation files of the paper's datasets to the manifest (docs/training.md §5).

Each ``convert_*`` reads the official files, writes one JSONL manifest per split
(``OUT_PREFIX_<split>.jsonl``, or ``OUT_PREFIX.jsonl`` when there is one split) and returns
``{split: path}``. Video paths are written as ``<videos>/<file>``; a relative ``videos`` folder is
resolved against the manifest's folder when the manifest is read. A malformed annotation raises
``ValueError`` naming the file and the entry.

Formats assumed (from each dataset's release; see the docstring of each function):

- **MUStARD** (github soujanyaporia/MUStARD): ``sarcasm_data.json`` = ``{id: {"utterance", "speaker",
  "context": [str], "context_speakers": [str], "show", "sarcasm": bool}}``; videos
  ``utterances_final/<id>.mp4``; optional ``split_indices.p`` (pickle: 5 pairs ``(train_idx,
  test_idx)`` of positions in the JSON's key order).
- **UR-FUNNY v2** (github ROC-HCI/UR-FUNNY): ``language_sdk.pkl`` = ``{id: {"punchline_sentence": str,
  "context_sentences": [str], ...}}``, ``humor_label_sdk.pkl`` = ``{id: 0|1}``, ``data_folds.pkl`` =
  ``{"train": [id], "dev": [id], "test": [id]}``; videos ``urfunny2_videos/<id>.mp4``.
- **CLEVRER-MC in MVBench** (OpenGVLab/MVBench ``json/``): ``moving_direction.json``,
  ``moving_count.json``, ``moving_attribute.json``, ``object_existence.json``, each a list of
  ``{"video": "video_10009.mp4", "question", "candidates": [str], "answer"}``; videos under
  MVBench's ``video/clevrer/video_validation/``.
- **QaEgo4D** (Bärmann & Waibel 2022): ``annotations.QaEgo4D_<split>.json`` = a list of ``{"video_id",
  "sample_id", "question", "answer", "moment_start_frame", "moment_end_frame"}`` (a dict holding
  such a list is accepted too); the ``*_options`` variants may add ``"options"`` /
  ``"wrong_answers"``; videos ``<video_id>.mp4`` (Ego4D full-scale videos). The whole video is the
  clip (episodic memory: the question is about anything seen before); the moment is kept in meta.
- **YouCook2** (youcook2.eecs.umich.edu): ``youcookii_annotations_trainval.json`` = ``{"database":
  {video_id: {"subset": "training"|"validation", "recipe_type", "duration", "annotations":
  [{"id", "segment": [start_s, end_s], "sentence"}]}}}``; videos
  ``raw_videos/<subset>/<recipe_type>/<video_id>.mp4`` (the extension is configurable). YouCook2 has
  no QA annotations and the paper does not publish its question set; our choice: per segment,
  "What is the person doing in this clip?" (answer: its sentence) and, when there is a next
  segment, "What is the next step after this clip?" (answer: the next sentence), both over the
  segment's time range.
"""
from __future__ import annotations

import builtins
import codecs
import collections
import json
import pickle
import random
from pathlib import Path

import numpy as np

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # NumPy 1
    from numpy.core import multiarray as _multiarray

from .data import write_manifest


# The only globals the official MUStARD / UR-FUNNY pickles reference: builtin containers and numbers
# (Python 2 pickles name the module ``__builtin__``), and NumPy arrays / scalars (``numpy.core`` in
# NumPy 1, ``numpy._core`` in NumPy 2; ``_codecs.encode`` carries array bytes in protocol-2 pickles).
_PICKLE_GLOBALS = {
    **{(m, n): getattr(builtins, n) for m in ("builtins", "__builtin__")
       for n in ("set", "frozenset", "complex", "bytearray", "slice", "range")},
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(f"numpy.{core}.multiarray", n): getattr(_multiarray, n)
       for core in ("core", "_core") for n in ("_reconstruct", "scalar")},
}


class _DataUnpickler(pickle.Unpickler):
    """Unpickles plain data only: any global outside :data:`_PICKLE_GLOBALS` is refused, so a pickle
    that would import or call something else (``os.system`` via ``__reduce__``) fails before it runs."""

    def __init__(self, file, path: Path, **kwargs):
        super().__init__(file, **kwargs)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"{self.path}: refusing to unpickle {module}.{name}: the dataset's files hold only builtin "
                "containers, numbers, strings and NumPy arrays, so this file is not one of them")
        return _PICKLE_GLOBALS[module, name]


def _load_pickle(path: Path):
    with open(path, "rb") as f:
        try:
            return _DataUnpickler(f, path).load()
        except UnicodeDecodeError:  # written by Python 2
            f.seek(0)
            return _DataUnpickler(f, path, encoding="latin1").load()


def _text(x) -> str:
    """A sentence given as a string or a list of words."""
    if isinstance(x, str):
        return x.strip()
    if isinstance(x, (list, tuple)):
        return " ".join(_text(w) for w in x).strip()
    raise ValueError(f"expected a sentence (str or list of words), got {type(x).__name__}")


def _write(out_prefix: str | Path, splits: dict[str, list[dict]]) -> dict[str, Path]:
    out_prefix = Path(out_prefix)
    if out_prefix.suffix == ".jsonl":
        out_prefix = out_prefix.with_suffix("")
    if len(splits) == 1:
        (name, records), = splits.items()
        return {name: write_manifest(out_prefix.with_suffix(".jsonl"), records)}
    return {name: write_manifest(out_prefix.parent / f"{out_prefix.name}_{name}.jsonl", records)
            for name, records in splits.items()}


def _video(videos: str | Path, name: str) -> str:
    return str(Path(videos) / name)


# ---------------------------------------------------------------------------------------------


def convert_mustard(annotations: str | Path, videos: str | Path, out: str | Path, *,
                    split_indices: str | Path | None = None, fold: int = 0,
                    speaker_independent: bool = False) -> dict[str, Path]:
    """MUStARD ``sarcasm_data.json`` -> manifest(s). Splits: all (default); the 5-fold split
    (``split_indices`` = MUStARD's ``split_indices.p``, ``fold`` 0-4) -> train/test; or
    ``speaker_independent`` (MUStARD's speaker-independent setting: Friends is the test set)."""
    annotations = Path(annotations)
    data = json.loads(annotations.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{annotations}: expected a JSON object keyed by utterance id")
    records = []
    for key, item in data.items():
        where = f"{annotations}: entry {key!r}"
        try:
            context, speakers = item.get("context", []), item.get("context_speakers", [])
            if len(context) != len(speakers):
                raise ValueError(f"{len(context)} context lines but {len(speakers)} context speakers")
            dialogue = [f"{s}: {_text(c)}" for s, c in zip(speakers, context)]
            dialogue.append(f"Target utterance, {item['speaker']}: {_text(item['utterance'])}")
            label = item["sarcasm"]
            if not isinstance(label, bool) and label not in (0, 1):
                raise ValueError(f"'sarcasm' must be true/false, got {label!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: {type(e).__name__}: {e}") from None
        records.append({
            "id": key, "task": "sarcasm", "video": _video(videos, f"{key}.mp4"), "context": "\n".join(dialogue),
            "question": "Is the target utterance sarcastic or not?", "options": ["sarcastic", "not sarcastic"],
            "answer": "sarcastic" if label else "not sarcastic", "show": item.get("show"),
        })
    if split_indices is not None:
        folds = _load_pickle(Path(split_indices))
        if not 0 <= fold < len(folds):
            raise ValueError(f"{split_indices}: fold {fold} out of range (it has {len(folds)} folds)")
        train_idx, test_idx = folds[fold]
        return _write(out, {"train": [records[i] for i in train_idx], "test": [records[i] for i in test_idx]})
    if speaker_independent:
        return _write(out, {"train": [r for r in records if str(r["show"]).upper() != "FRIENDS"],
                            "test": [r for r in records if str(r["show"]).upper() == "FRIENDS"]})
    return _write(out, {"all": records})


def convert_urfunny(language_sdk: str | Path, labels: str | Path, folds: str | Path, videos: str | Path,
                    out: str | Path, *, train_fraction: float = 1.0, seed: int = 0) -> dict[str, Path]:
    """UR-FUNNY v2 pickles -> ``OUT_{train,dev,test}.jsonl``. ``train_fraction`` < 1 keeps a seeded
    random subset of the training split (the paper's reduced-training experiment)."""
    language, label_map, fold_map = _load_pickle(Path(language_sdk)), _load_pickle(Path(labels)), _load_pickle(Path(folds))
    splits = {}
    for split in ("train", "dev", "test"):
        if split not in fold_map:
            raise ValueError(f"{folds}: no {split!r} list (keys: {sorted(fold_map)})")
        records = []
        for key in fold_map[split]:
            where = f"{language_sdk}: id {key!r}"
            if key not in language:
                raise ValueError(f"{where}: listed in {folds} [{split}] but absent from the language file")
            if key not in label_map:
                raise ValueError(f"{labels}: no label for id {key!r}")
            item = language[key]
            try:
                context = [_text(s) for s in item.get("context_sentences", [])]
                punchline = _text(item["punchline_sentence"])
            except (KeyError, ValueError) as e:
                raise ValueError(f"{where}: {type(e).__name__}: {e}") from None
            label = int(label_map[key])
            records.append({
                "id": str(key), "task": "humor", "video": _video(videos, f"{key}.mp4"),
                "context": "\n".join(context + [f"Punchline: {punchline}"]),
                "question": "Is the punchline humorous or not?", "options": ["humorous", "not humorous"],
                "answer": "humorous" if label == 1 else "not humorous",
            })
        if split == "train" and train_fraction < 1.0:
            rng = random.Random(seed)
            records = sorted(rng.sample(records, max(1, int(len(records) * train_fraction))), key=lambda r: r["id"])
        splits[split] = records
    return _write(out, splits)


def convert_clevrer_mc(task_files: list[str | Path], videos: str | Path, out: str | Path) -> dict[str, Path]:
    """MVBench CLEVRER task files (e.g. ``moving_direction.json``) -> one manifest; ``task`` is the
    file's stem, so metrics are reported per task (MD, MC, MA, OE)."""
    records = []
    for path in map(Path, task_files):
        items = json.loads(path.read_text())
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of questions")
        for i, item in enumerate(items):
            where = f"{path}: entry {i}"
            try:
                options = [str(c) for c in item["candidates"]]
                answer = str(item["answer"])
                video, question = item["video"], item["question"]
            except (KeyError, TypeError) as e:
                raise ValueError(f"{where}: missing field {e}") from None
            if answer not in options:
                raise ValueError(f"{where}: answer {answer!r} is not among candidates {options}")
            rec = {"id": f"{path.stem}_{i}", "task": path.stem, "video": _video(videos, video),
                   "question": question, "options": options, "answer": answer}
            for key in ("start", "end"):
                if key in item:
                    rec[key] = item[key]
            records.append(rec)
    return _write(out, {"all": records})


def convert_qaego4d(annotation_files: dict[str, str | Path], videos: str | Path, out: str | Path,
                    video_ext: str = ".mp4") -> dict[str, Path]:
    """QaEgo4D ``annotations.QaEgo4D_<split>.json`` files (``{split: path}``) -> ``OUT_<split>.jsonl``."""
    splits = {}
    for split, path in annotation_files.items():
        path = Path(path)
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise ValueError(f"{path}: expected a list of samples (or a dict holding exactly one)")
            data = lists[0]
        records = []
        for i, item in enumerate(data):
            where = f"{path}: entry {i}"
            try:
                vid, question, answer = item["video_id"], item["question"], item["answer"]
            except (KeyError, TypeError) as e:
                raise ValueError(f"{where}: missing field {e}") from None
            rec = {"id": str(item.get("sample_id", f"{split}_{i}")), "task": "qaego4d",
                   "video": _video(videos, f"{vid}{video_ext}"), "question": question, "answer": answer,
                   "moment_frames": [item.get("moment_start_frame"), item.get("moment_end_frame")]}
            options = item.get("options")
            if options is None and "wrong_answers" in item:
                options = sorted([answer] + list(item["wrong_answers"]))
            if options is not None:
                if answer not in options:
                    raise ValueError(f"{where}: answer {answer!r} is not among options {options}")
                rec["options"] = list(options)
            records.append(rec)
        splits[split] = records
    return _write(out, splits)


def convert_youcook2(annotations: str | Path, videos: str | Path, out: str | Path,
                     video_pattern: str = "{subset}/{recipe_type}/{video_id}.mp4") -> dict[str, Path]:
    """YouCook2 ``youcookii_annotations_trainval.json`` -> ``OUT_{training,validation}.jsonl`` (QA
    built from the segment captions; see the module docstring)."""
    annotations = Path(annotations)
    db = json.loads(annotations.read_text())
    if "database" not in db:
        raise ValueError(f"{annotations}: expected a top-level 'database' object")
    splits: dict[str, list[dict]] = {}
    for vid, item in db["database"].items():
        where = f"{annotations}: video {vid!r}"
        try:
            subset, segments = item["subset"], sorted(item["annotations"], key=lambda a: a["segment"][0])
            video = _video(videos, video_pattern.format(subset=subset, recipe_type=item.get("recipe_type", ""),
                                                        video_id=vid))
            for j, seg in enumerate(segments):
                start, end = (float(x) for x in seg["segment"])
                if not end > start:
                    raise ValueError(f"segment {seg.get('id', j)} has end {end} <= start {start}")
                base = {"video": video, "start": start, "end": end, "task": "youcook2"}
                splits.setdefault(subset, []).append(dict(
                    base, id=f"{vid}_{seg.get('id', j)}_what", question="What is the person doing in this clip?",
                    answer=seg["sentence"].strip()))
                if j + 1 < len(segments):
                    splits[subset].append(dict(
                        base, id=f"{vid}_{seg.get('id', j)}_next", question="What is the next step after this clip?",
                        answer=segments[j + 1]["sentence"].strip()))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: {type(e).__name__}: {e}") from None
    return _write(out, splits)


# ---------------------------------------------------------------------------------------------


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert official dataset annotations to a JSONL manifest")
    sub = p.add_subparsers(dest="dataset", required=True)

    q = sub.add_parser("mustard", help="MUStARD sarcasm_data.json")
    q.add_argument("annotations")
    q.add_argument("--videos", required=True, help="folder of utterance videos (utterances_final)")
    q.add_argument("--out", required=True, help="output prefix (OUT.jsonl or OUT_<split>.jsonl)")
    q.add_argument("--split-indices", default=None, help="MUStARD split_indices.p (5-fold)")
    q.add_argument("--fold", type=int, default=0)
    q.add_argument("--speaker-independent", action="store_true")
    q.set_defaults(func=_run_convert, convert=lambda a: convert_mustard(a.annotations, a.videos, a.out, split_indices=a.split_indices,
                                                  fold=a.fold, speaker_independent=a.speaker_independent))

    q = sub.add_parser("urfunny", help="UR-FUNNY v2 pickles")
    q.add_argument("--language", required=True, help="language_sdk.pkl")
    q.add_argument("--labels", required=True, help="humor_label_sdk.pkl")
    q.add_argument("--folds", required=True, help="data_folds.pkl")
    q.add_argument("--videos", required=True, help="folder of urfunny2_videos")
    q.add_argument("--out", required=True)
    q.add_argument("--train-fraction", type=float, default=1.0)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=_run_convert, convert=lambda a: convert_urfunny(a.language, a.labels, a.folds, a.videos, a.out,
                                                  train_fraction=a.train_fraction, seed=a.seed))

    q = sub.add_parser("clevrer_mc", help="MVBench CLEVRER task files (moving_direction.json ...)")
    q.add_argument("task_files", nargs="+")
    q.add_argument("--videos", required=True, help="MVBench video/clevrer/video_validation folder")
    q.add_argument("--out", required=True)
    q.set_defaults(func=_run_convert, convert=lambda a: convert_clevrer_mc(a.task_files, a.videos, a.out))

    q = sub.add_parser("qaego4d", help="QaEgo4D annotation files, given as SPLIT=PATH")
    q.add_argument("files", nargs="+", metavar="SPLIT=PATH")
    q.add_argument("--videos", required=True)
    q.add_argument("--out", required=True)
    q.set_defaults(func=_run_convert, convert=lambda a: convert_qaego4d(dict(f.split("=", 1) for f in a.files), a.videos, a.out))

    q = sub.add_parser("youcook2", help="YouCook2 youcookii_annotations_trainval.json")
    q.add_argument("annotations")
    q.add_argument("--videos", required=True, help="raw_videos folder")
    q.add_argument("--out", required=True)
    q.add_argument("--video-pattern", default="{subset}/{recipe_type}/{video_id}.mp4")
    q.set_defaults(func=_run_convert, convert=lambda a: convert_youcook2(a.annotations, a.videos, a.out, a.video_pattern))


def _run_convert(args) -> int:
    for split, path in args.convert(args).items():
        print(f"{split}: {path}")
    return 0
