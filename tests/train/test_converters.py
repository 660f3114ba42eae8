"""Each converter on a small file in the dataset's official format (see stquery/train/converters.py)."""
import json
import pickle

import pytest

from stquery.train.cli import main
from stquery.train.converters import (convert_clevrer_mc, convert_mustard, convert_qaego4d, convert_urfunny,
                                      convert_youcook2)
from stquery.train.data import read_manifest


def _records(path):
    return read_manifest(path, check_files=False).records  # the videos are not part of these tests


MUSTARD = {
    "1_60": {"utterance": "It's just a privilege to watch your mind at work.", "speaker": "SHELDON",
             "context": ["I never would have identified the fingerprints of string theory in the aftermath of the Big Bang.",
                         "My apologies. What's your plan?"],
             "context_speakers": ["LEONARD", "SHELDON"], "show": "BBT", "sarcasm": True},
    "1_70": {"utterance": "I'm fine.", "speaker": "RACHEL", "context": ["How are you?"],
             "context_speakers": ["MONICA"], "show": "FRIENDS", "sarcasm": False},
    "2_10": {"utterance": "Oh, great.", "speaker": "DOROTHY", "context": [], "context_speakers": [],
             "show": "GOLDENGIRLS", "sarcasm": True},
}


def test_mustard(tmp_path):
    ann = tmp_path / "sarcasm_data.json"
    ann.write_text(json.dumps(MUSTARD))
    out = convert_mustard(ann, "utterances_final", tmp_path / "mustard")
    recs = _records(out["all"])
    assert [r.id for r in recs] == ["1_60", "1_70", "2_10"]
    assert recs[0].answer == "sarcastic" and recs[1].answer == "not sarcastic"
    assert recs[0].options == ["sarcastic", "not sarcastic"]
    assert recs[0].context.splitlines()[0].startswith("LEONARD: I never")
    assert recs[0].context.endswith("SHELDON: It's just a privilege to watch your mind at work.")
    assert recs[0].video.name == "1_60.mp4" and recs[0].video.parent.name == "utterances_final"
    # MUStARD's 5-fold split file: pickled list of (train indices, test indices)
    with open(tmp_path / "split_indices.p", "wb") as f:
        pickle.dump([([0, 2], [1]), ([1, 2], [0])], f, protocol=2)
    out = convert_mustard(ann, "v", tmp_path / "m5", split_indices=tmp_path / "split_indices.p", fold=1)
    assert [r.id for r in _records(out["test"])] == ["1_60"]
    out = convert_mustard(ann, "v", tmp_path / "msi", speaker_independent=True)
    assert [r.id for r in _records(out["test"])] == ["1_70"]
    bad = dict(MUSTARD, x={"utterance": "u", "speaker": "s", "context": ["a"], "context_speakers": [], "sarcasm": True})
    ann.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"sarcasm_data.json: entry 'x'.*1 context lines but 0"):
        convert_mustard(ann, "v", tmp_path / "bad")


def test_urfunny(tmp_path):
    language = {
        101: {"punchline_sentence": "and that's why I never fly", "context_sentences": ["I was at the airport", "then"],
              "punchline_embedding_indexes": [1, 2], "context_embedding_indexes": [[3], [4]]},
        102: {"punchline_sentence": ["thank", "you"], "context_sentences": [["so", "we", "built", "it"]]},
        103: {"punchline_sentence": "it works", "context_sentences": []},
    }
    for name, obj in (("language_sdk.pkl", language), ("humor_label_sdk.pkl", {101: 1, 102: 0, 103: 1}),
                      ("data_folds.pkl", {"train": [101, 102], "dev": [103], "test": []})):
        with open(tmp_path / name, "wb") as f:
            pickle.dump(obj, f)
    out = convert_urfunny(tmp_path / "language_sdk.pkl", tmp_path / "humor_label_sdk.pkl", tmp_path / "data_folds.pkl",
                          "urfunny2_videos", tmp_path / "urfunny")
    train = _records(out["train"])
    assert [(r.id, r.answer) for r in train] == [("101", "humorous"), ("102", "not humorous")]
    assert train[0].context == "I was at the airport\nthen\nPunchline: and that's why I never fly"
    assert train[1].context == "so we built it\nPunchline: thank you"
    assert _records(out["dev"])[0].video.name == "103.mp4" and _records(out["test"]) == []
    out = convert_urfunny(tmp_path / "language_sdk.pkl", tmp_path / "humor_label_sdk.pkl", tmp_path / "data_folds.pkl",
                          "v", tmp_path / "small", train_fraction=0.5)
    assert len(_records(out["train"])) == 1


def test_clevrer_mc(tmp_path):
    md = [{"video": "video_10009.mp4", "question": "What direction is the cyan sphere moving when the video ends?",
           "candidates": ["left", "right", "up", "down"], "answer": "left"},
          {"video": "video_10010.mp4", "question": "Which direction is the cube moving?",
           "candidates": ["up", "down"], "answer": "down"}]
    mc = [{"video": "video_10011.mp4", "question": "How many objects are moving when the video ends?",
           "candidates": ["2", "3", "1"], "answer": "3"}]
    (tmp_path / "moving_direction.json").write_text(json.dumps(md))
    (tmp_path / "moving_count.json").write_text(json.dumps(mc))
    out = convert_clevrer_mc([tmp_path / "moving_direction.json", tmp_path / "moving_count.json"],
                             "clevrer/video_validation", tmp_path / "clevrer")
    recs = _records(out["all"])
    assert [r.task for r in recs] == ["moving_direction", "moving_direction", "moving_count"]
    assert recs[2].options == ["2", "3", "1"] and recs[2].answer == "3"
    assert str(recs[0].video).endswith("clevrer/video_validation/video_10009.mp4")
    (tmp_path / "moving_count.json").write_text(json.dumps([dict(mc[0], answer="7")]))
    with pytest.raises(ValueError, match=r"moving_count.json: entry 0: answer '7' is not among"):
        convert_clevrer_mc([tmp_path / "moving_count.json"], "v", tmp_path / "bad")


def test_qaego4d(tmp_path):
    train = [{"video_id": "a1b2", "sample_id": "s0", "question": "Where did I put the scissors?",
              "answer": "in the drawer", "moment_start_frame": 120, "moment_end_frame": 180}]
    test = [{"video_id": "c3d4", "sample_id": "s1", "question": "What did I pour into the bowl?", "answer": "milk",
             "wrong_answers": ["water", "juice", "flour"], "moment_start_frame": 10, "moment_end_frame": 40}]
    (tmp_path / "annotations.QaEgo4D_train.json").write_text(json.dumps(train))
    (tmp_path / "annotations.QaEgo4D_test_options.json").write_text(json.dumps({"data": test}))
    # through the CLI, as a user would run it
    main(["convert", "qaego4d", f"train={tmp_path / 'annotations.QaEgo4D_train.json'}",
          f"test={tmp_path / 'annotations.QaEgo4D_test_options.json'}", "--videos", "ego4d/v1/full_scale",
          "--out", str(tmp_path / "qaego4d")])
    tr = _records(tmp_path / "qaego4d_train.jsonl")
    te = _records(tmp_path / "qaego4d_test.jsonl")
    assert tr[0].answer == "in the drawer" and tr[0].options is None and tr[0].video.name == "a1b2.mp4"
    assert tr[0].meta["moment_frames"] == [120, 180]
    assert te[0].options == ["flour", "juice", "milk", "water"] and te[0].answer == "milk"


def test_youcook2(tmp_path):
    db = {"database": {
        "GLd3aX16zBg": {"duration": 241.62, "subset": "training", "recipe_type": "113",
                        "video_url": "https://www.youtube.com/watch?v=GLd3aX16zBg",
                        "annotations": [{"segment": [90, 102], "id": 0, "sentence": "spread margarine on two slices of white bread"},
                                        {"segment": [114, 127], "id": 1, "sentence": "place a slice of cheese on the bread"}]},
        "xHr8X2Wpmno": {"duration": 100.0, "subset": "validation", "recipe_type": "101",
                        "annotations": [{"segment": [5, 20], "id": 0, "sentence": "boil the noodles"}]},
    }}
    (tmp_path / "youcookii_annotations_trainval.json").write_text(json.dumps(db))
    out = convert_youcook2(tmp_path / "youcookii_annotations_trainval.json", "raw_videos", tmp_path / "yc2")
    tr = _records(out["training"])
    assert [r.question for r in tr] == ["What is the person doing in this clip?", "What is the next step after this clip?",
                                        "What is the person doing in this clip?"]
    assert tr[1].answer == "place a slice of cheese on the bread" and (tr[1].start, tr[1].end) == (90.0, 102.0)
    assert str(tr[0].video).endswith("raw_videos/training/113/GLd3aX16zBg.mp4")
    assert len(_records(out["validation"])) == 1


class _RunsCode:
    """A pickle that would create ``marker`` when loaded (as ``os.system`` or worse could)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_pickles_that_run_code_are_refused(tmp_path):
    ann = tmp_path / "sarcasm_data.json"
    ann.write_text(json.dumps(MUSTARD))
    marker = tmp_path / "ran"
    with open(tmp_path / "split_indices.p", "wb") as f:
        pickle.dump([([0, 2], [_RunsCode(marker)])], f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"split_indices\.p: refusing to unpickle posix\.mkdir"):
        convert_mustard(ann, "v", tmp_path / "m", split_indices=tmp_path / "split_indices.p")
    assert not marker.exists()
    with open(tmp_path / "language_sdk.pkl", "wb") as f:
        pickle.dump({101: {"punchline_sentence": _RunsCode(marker)}}, f)
    with pytest.raises(pickle.UnpicklingError, match=r"language_sdk\.pkl: refusing"):
        convert_urfunny(tmp_path / "language_sdk.pkl", tmp_path / "y.pkl", tmp_path / "z.pkl", "v", tmp_path / "u")
    assert not marker.exists()


@pytest.mark.parametrize("numpy_module", [b"numpy._core", b"numpy.core"])
def test_numpy_pickles_of_numpy_1_and_2_load(tmp_path, numpy_module):
    """The official split file holds NumPy index arrays (written by NumPy 1, Python 2 protocol)."""
    import numpy as np

    ann = tmp_path / "sarcasm_data.json"
    ann.write_text(json.dumps(MUSTARD))
    folds = [(np.array([0, 2]), np.array([1], dtype=np.int32)), (np.array([1, 2]), [np.int64(0)])]
    data = pickle.dumps(folds, protocol=2).replace(b"numpy._core", numpy_module)
    (tmp_path / "split_indices.p").write_bytes(data)
    out = convert_mustard(ann, "v", tmp_path / "m", split_indices=tmp_path / "split_indices.p", fold=1)
    assert [r.id for r in _records(out["test"])] == ["1_60"]
