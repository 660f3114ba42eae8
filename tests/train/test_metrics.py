import pytest

from stquery.train.data import Record
from stquery.train.metrics import evaluate_predictions, meteor, normalize, parse_choice, rouge_l

OPTS = ["sarcastic", "not sarcastic"]


@pytest.mark.parametrize("prediction, expected", [
    ("Sarcastic.", "sarcastic"),
    ("not sarcastic", "not sarcastic"),
    ("The answer is: not sarcastic", "not sarcastic"),
    ("I think it is not sarcastic at all", "not sarcastic"),  # "sarcastic" inside it does not count
    ("(B)", "not sarcastic"),
    ("A. because of the tone", "sarcastic"),
    ("B", "not sarcastic"),
    ("no idea", None),
])
def test_parse_choice(prediction, expected):
    assert parse_choice(prediction, OPTS) == expected


def test_parse_choice_ambiguity_and_articles():
    assert parse_choice("left or right", ["left", "right", "up"]) is None  # two options named
    assert parse_choice("A cube", ["cube", "sphere"]) == "cube"  # "A" here is an article, not option A
    assert normalize("The Answer: In the drawer!", drop_articles=True) == "in drawer"


def test_text_metrics_offline():
    assert rouge_l(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    # LCS "the cat the mat" = 4 of 6 tokens on both sides
    assert rouge_l(["the cat lay on the mat"], ["the cat sat by the mat"]) == pytest.approx(4 / 6)
    score, synonyms = meteor(["a man slices the onions"], ["a man slices the onions"])
    assert score > 0.99
    partial, _ = meteor(["a man cuts an onion"], ["a man slices the onions"])
    assert 0.2 < partial < 0.9  # exact ("a", "man") + stem ("onion") matches, nothing downloaded


def test_evaluate_predictions_groups_by_task():
    recs = [Record("m:1", "q", "left", options=["left", "right"], task="direction"),
            Record("m:2", "q", "right", options=["left", "right"], task="direction"),
            Record("m:3", "q", "in the drawer", task="open")]
    m = evaluate_predictions(["Left.", "up", "In the drawer."], recs)
    assert m["n"] == 3 and m["accuracy"] == pytest.approx(2 / 3) and m["unparsed"] == 1
    assert m["tasks"]["direction"]["accuracy"] == 0.5
    assert m["tasks"]["open"]["rouge_l"] == pytest.approx(1.0) and "meteor" in m["tasks"]["open"]
