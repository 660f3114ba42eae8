"""``stquery profile``: every implementation gets a row (a number or its reason), the peers compute
what stquery computes, results are saved and summarised, and the report ranks only what it can trust."""
import argparse
import dataclasses
import json

import pytest
import torch

from stquery.profile import cases, cli, harness, report
from stquery.profile.config import CPU as CPU_DEFAULTS
from stquery.profile.config import QUICK, Shape
from stquery.profile.harness import DeviceInfo, Row
from stquery.profile.peers import Unavailable

TINY = dataclasses.replace(QUICK, T=(4, 8), frames_total=8, batch=1, batch_ms=0.5, samples=2)
CPU = torch.device("cpu")


def _run(cfg, impl_filter=None):
    dev, rows = harness.profile(cfg, CPU, impl_filter=impl_filter)
    report.rank(dev, rows, cfg.max_spread)
    return dev, rows


@pytest.mark.parametrize("case", ["temporal", "temporal-mix", "temporal-scale", "spatial", "topk", "st_pool"])
def test_peers_match_the_reference(case):
    """Every implementation that runs (FlexAttention aside: see the next test) agrees with
    stquery.ops.reference, at both sweeps' shapes; one that can't run has a reason."""
    cfg = dataclasses.replace(TINY, cases=(case,))
    names = [i.name for i in cases.make_cases()[case].impls if i.name != "flex"]
    _, rows = _run(cfg, impl_filter=names)
    assert {r.impl for r in rows} == set(names)
    for r in rows:
        if r.ok:
            assert r.ms > 0 and r.gbps > 0 and r.pct_roofline > 0
            if r.passes == "fwd":
                assert r.rel_err is not None and r.rel_err <= 1e-3, (r.impl, r.T, r.rel_err)
                assert "MISMATCH" not in r.note
        else:
            assert r.reason, r
    ran = {r.impl for r in rows if r.ok}
    assert "stquery-torch" in ran and len(ran) >= 2  # the torch backend and at least one peer run on CPU


def test_flex_matches_the_reference():
    """FlexAttention's mask_mod (mix) and alpha-carrying score_mod (scale) compute docs/ops.md §2.3's modes."""
    cfg = dataclasses.replace(TINY, T=(8,), sweeps=("fixed-B",), cases=("temporal", "temporal-mix", "temporal-scale"))
    _, rows = _run(cfg, impl_filter=["flex"])
    fwd = [r for r in rows if r.passes == "fwd"]
    assert len(fwd) == 3
    for r in fwd:
        assert r.ok, r.reason
        assert r.rel_err <= 1e-3, (r.case, r.rel_err)
    for r in rows:
        if r.passes == "fwd+bwd":  # no backward on CPU: said, not hidden
            assert not r.ok and "backward" in r.reason


def test_every_implementation_has_a_row_and_the_results_are_saved(tmp_path, capsys):
    out = tmp_path / "results"
    argv = ["--quick", "--T", "4", "--frames-total", "8", "--cases", "temporal,st_pool", "--impls",
            "stquery,eager,head-fold,xformers,flash,torch-mean", "--batch-ms", "0.5", "--samples", "2", "--quiet",
            "--out", str(out)]
    assert cli.main(argv) == 0
    text = (out / "profile.md").read_text()
    for name in ("stquery-torch", "stquery-triton", "stquery-cuda", "eager-permute", "head-fold", "xformers",
                 "flash-attn", "torch-mean"):
        assert f"| {name} |" in text, name
    data = json.loads((out / "profile.json").read_text())
    assert data["device"]["copy_gbps"] > 0 and data["device"]["matmul_tflops"] > 0
    failed = [r for r in data["rows"] if not r["ok"]]
    assert failed and all(r["reason"] for r in failed)
    for r in failed:  # each failure's reason is in the table
        assert r["reason"][:60].replace("|", "\\|") in text
    triton_rows = [r for r in data["rows"] if r["impl"] == "stquery-triton"]
    assert triton_rows and not any(r["ok"] for r in triton_rows)  # never timed in the interpreter on CPU
    assert (out / "profile.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "## Summary" in text and {s["case"] for s in data["summary"]} == {"temporal", "st_pool"}
    for case in ("temporal", "st_pool"):  # the summary, one line per case and pass, then where the files are
        assert sum(line.startswith(case + " ") for line in printed.splitlines()) == 2, printed
    assert str(out) in printed.splitlines()[-1]


def test_from_json_merges_earlier_runs(tmp_path):
    for part, case in (("a", "topk"), ("b", "st_pool")):
        cli.main(["--quick", "--T", "4", "--sweeps", "fixed-B", "--passes", "fwd", "--cases", case, "--impls",
                  "torch", "--batch-ms", "0.5", "--samples", "2", "--quiet", "--out", str(tmp_path / part)])
    assert cli.main(["--from-json", str(tmp_path / "a/profile.json"), str(tmp_path / "b/profile.json"),
                     "--out", str(tmp_path / "m")]) == 0
    text = (tmp_path / "m/profile.md").read_text()
    assert "## topk" in text and "## st_pool" in text


def test_triton_interpreter_is_never_timed(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    case = cases.make_cases()["st_pool"]
    impl = next(i for i in case.impls if i.name == "stquery-triton")
    s = Shape(1, 2, 1, 1, 1, 2, 4)
    with pytest.raises(Unavailable, match="interpreter"):
        impl.build(harness.make_inputs(case, s, CPU, torch.float32, "fwd"), s)


def test_unregistered_backend_says_so(monkeypatch):
    import stquery.backends as sb

    monkeypatch.setattr(sb, "names", lambda: ["torch"])
    case = cases.make_cases()["st_pool"]
    impl = next(i for i in case.impls if i.name == "stquery-cuda")
    s = Shape(1, 2, 1, 1, 1, 2, 4)
    with pytest.raises(Unavailable, match="not registered"):
        impl.build(harness.make_inputs(case, s, CPU, torch.float32, "fwd"), s)


def _row(impl, kind, T=4, ms=1.0, spread=0.1, **kw):
    return Row("c", "s", "fwd", T, 1, impl, kind, True, ms=ms, p20=ms * (1 - spread / 2), p80=ms * (1 + spread / 2),
               bytes=kw.pop("bytes", 10 ** 6), flops=kw.pop("flops", 10 ** 6), **kw)


def _dev():
    return DeviceInfo("cpu", "cpu", copy_gbps=10.0, matmul_tflops=0.01, matmul_dtype="float32")


def test_speedup_is_over_the_best_peer():
    rows = [_row("stquery-x", "stquery", ms=1.0), _row("peer-a", "peer", ms=2.0), _row("peer-b", "peer", ms=4.0),
            Row("c", "s", "fwd", 4, 1, "peer-c", "peer", False, reason="not installed"),
            _row("stquery-x", "stquery", T=8, ms=1.0)]  # no peer ran at T=8
    report.rank(_dev(), rows, max_spread=0.25)
    assert [r.speedup for r in rows] == [2.0, 1.0, 0.5, None, None]


def test_a_wide_spread_ranks_nothing():
    """The yardstick is the fastest peer and the fastest stquery backend: where either is wide the
    shape has no ratio (a slower, narrower row in its place would bend the ratio), only a bound."""
    rows = [_row("stquery-x", "stquery", ms=1.0, spread=0.1), _row("peer-a", "peer", ms=0.5, spread=0.6),
            _row("peer-b", "peer", ms=2.0, spread=0.1),  # T=4: the fastest peer is wide
            _row("stquery-x", "stquery", T=8, ms=1.0, spread=0.9), _row("peer-b", "peer", T=8, ms=3.0, spread=0.1),
            _row("stquery-x", "stquery", T=16, ms=1.0), _row("stquery-y", "stquery", T=16, ms=1.5),
            _row("peer-a", "peer", T=16, ms=6.0, spread=0.6), _row("peer-b", "peer", T=16, ms=4.0),
            _row("stquery-x", "stquery", T=32, ms=1.0, spread=0.9), _row("stquery-y", "stquery", T=32, ms=2.0),
            _row("peer-b", "peer", T=32, ms=4.0)]  # T=32: stquery's fastest backend is wide
    report.rank(_dev(), rows, max_spread=0.25)
    assert [r.wide for r in rows[:5]] == [False, True, False, True, False]
    assert [r.speedup for r in rows[:5]] == [None, None, None, None, 1.0]  # T=8: peer-b against itself
    assert rows[5].speedup == 4.0 and rows[6].speedup == pytest.approx(4.0 / 1.5)  # a slower wide peer is no matter
    assert rows[9].speedup is None and rows[10].speedup == 2.0
    cfg = dataclasses.replace(TINY, sweeps=("s",), passes=("fwd",))
    text = report.markdown(_dev(), cfg, rows)
    assert text.count("WIDE SPREAD (p20") == 4
    (s,) = report.summary(rows)
    assert (s["compared"], s["shapes"], s["wide"], s["stquery"], s["peer"]) == (1, 4, 3, "stquery-x", "peer-b")
    assert s["speedup"] == pytest.approx(4.0) and s["low"] < 4.0 < s["high"] and s["bounded"] == 4


def test_every_row_gets_the_speedup_it_has_at_least():
    """at_least = the other peers' fastest p20 over the row's p80: a bound that noise, which only
    slows calls, can only lower; rows that can't be ranked still get one, and the summary takes the
    worst shape's."""
    rows = [_row("stquery-x", "stquery", ms=1.0, spread=0.1), _row("peer-a", "peer", ms=4.0, spread=0.6),
            _row("peer-b", "peer", ms=5.0, spread=0.8), _row("stquery-x", "stquery", T=8, ms=1.0, spread=0.1),
            _row("peer-a", "peer", T=8, ms=3.0, spread=0.1)]
    report.rank(_dev(), rows, max_spread=0.25)
    assert rows[0].speedup is None  # both peers wide: not ranked...
    assert rows[0].at_least == pytest.approx(2.8 / 1.05)  # ...but at least peer-a's p20 over its p80
    assert rows[1].at_least == pytest.approx(3.0 / 5.2)  # a peer against the other peer only
    assert rows[3].at_least == pytest.approx(2.85 / 1.05) and rows[4].at_least is None
    (s,) = report.summary(rows)
    assert s["at_least"] == pytest.approx(2.8 / 1.05) and s["bounded"] == 2 and s["compared"] == 1
    assert f"{2.8 / 1.05:.2f}x in 2/2" in report.summary_text(rows)
    cfg = dataclasses.replace(TINY, sweeps=("s",), passes=("fwd",))
    rows.append(Row("c", "s", "fwd", 8, 1, "peer-c", "peer", False, reason="not installed"))
    text = report.markdown(_dev(), cfg, rows)
    assert f"| {2.8 / 1.05:.2f} |" in text
    table = [line for line in text.splitlines() if line.startswith("| ") or line.startswith("|-")]
    assert len(table) == 2 + 6 and {line.count("|") for line in table} == {len(report.COLUMNS) + 1}


def test_roof_is_never_above_100_percent():
    """The peaks are the best rates seen: a row faster than the measured matmul raises the peak."""
    rows = [_row("stquery-x", "stquery", ms=0.01, flops=10 ** 9, bytes=10),  # 100 TFLOP/s > 0.01 measured
            _row("peer-a", "peer", ms=0.01, bytes=10 ** 9, flops=10),  # 100 TB/s... > 10 GB/s measured
            _row("peer-b", "peer", ms=1.0)]
    dev = _dev()
    report.rank(dev, rows, max_spread=0.25)
    assert dev.peak_tflops == pytest.approx(100.0) and dev.peak_gbps == pytest.approx(1e5)
    assert all(0 < r.pct_roofline <= 100 + 1e-9 and r.pct_bw <= 100 + 1e-9 for r in rows)
    assert rows[0].pct_roofline == pytest.approx(100.0) and "best row" in dev.peak_note


def test_markdown_collapses_a_failure_that_is_the_same_at_every_T():
    cfg = dataclasses.replace(TINY, sweeps=("fixed-B",), passes=("fwd",))
    rows = [Row("topk", "fixed-B", "fwd", T, 1, "torch-topk", "peer", True, ms=1.0, p20=0.9, p80=1.1, bytes=8, flops=0)
            for T in (4, 8)]
    rows += [Row("topk", "fixed-B", "fwd", T, 1, "stquery-cuda", "stquery", False, reason="no CUDA") for T in (4, 8)]
    report.rank(_dev(), rows, cfg.max_spread)
    text = report.markdown(_dev(), cfg, rows)
    assert text.count("can't run: no CUDA") == 1
    assert "| all | | stquery-cuda |" in text
    assert text.count("| torch-topk |") == 2


def test_interleaved_timing_takes_turns():
    calls = []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    times = harness.interleaved(fns, CPU, batch_ms=0.0, samples=3)
    assert {n: len(t) for n, (t, reps) in times.items()} == {"a": 3, "b": 3, "c": 3}
    timed = calls[9:]  # after three calibration calls each
    assert timed[0::2] == timed[1::2]  # each batch after an untimed call of the same fn (settle)
    rounds = [timed[i:i + 6:2] for i in range(0, 18, 6)]
    assert all(sorted(r) == list("abc") for r in rounds)  # each round: every fn once
    calls.clear()
    harness.interleaved(fns, CPU, batch_ms=0.0, samples=3)
    assert calls[9:] == timed  # the same orders on every run (a fixed seed)


def test_settle_gives_the_free_heap_back_then_calls_once(monkeypatch):
    trims, calls = [], []
    monkeypatch.setattr(harness, "_malloc_trim", lambda: trims.append)
    harness.settle(lambda: calls.append(len(trims)), CPU)
    assert trims == [0] and calls == [1]  # trimmed first, then one call


def test_register_adds_the_subcommand_with_this_device_defaults(capsys):
    parser = argparse.ArgumentParser(prog="stquery")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["profile", "--quick", "--T", "4,16", "--cases", "topk"])
    assert args.func is cli.run
    cfg = cli.config_from_args(args, CPU)
    assert cfg.T == (4, 16) and cfg.cases == ("topk",) and cfg.quick
    full = cli.config_from_args(parser.parse_args(["profile"]), torch.device("cuda"))
    assert (full.dtype, full.L, full.H, full.d, full.frames_total) == ("bf16", 32, 12, 64, 2048)
    assert full.T == (4, 8, 16, 32, 64, 128, 256, 512, 1024)
    on_cpu = cli.config_from_args(parser.parse_args(["profile"]), CPU)
    assert on_cpu == CPU_DEFAULTS and on_cpu.dtype == "fp32"
    with pytest.raises(SystemExit):
        parser.parse_args(["profile", "--cases", "nonsense"])
    if not torch.cuda.is_available():  # --help shows the defaults of the device it runs on
        with pytest.raises(SystemExit):
            parser.parse_args(["profile", "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "cpu: fp32" in help_text and "4,8,16,32,64,128,256" in help_text and "1024" not in help_text
