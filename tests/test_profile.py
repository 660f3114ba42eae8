"""``stquery profile``: every implementation gets a row (a number or its reason), the peers compute
what stquery computes, and the reports (markdown, JSON, plot) come out."""
import argparse
import dataclasses
import json

import pytest
import torch

from stquery import profile

TINY = dataclasses.replace(profile.QUICK, T=(4, 8), frames_total=8, batch=1, budget_ms=1.0, min_reps=1, max_reps=2)
CPU = torch.device("cpu")


def _run(cfg, impl_filter=None):
    return profile.profile(cfg, CPU, impl_filter=impl_filter)


@pytest.mark.parametrize("case", ["temporal", "temporal-mix", "temporal-scale", "spatial", "topk", "st_pool"])
def test_peers_match_the_reference(case):
    """Every implementation that runs (FlexAttention aside: see the next test) agrees with
    stquery.ops.reference, at both sweeps' shapes; one that can't run has a reason."""
    cfg = dataclasses.replace(TINY, cases=(case,))
    names = [i.name for i in profile.make_cases()[case].impls if i.name != "flex"]
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
    """FlexAttention's mask_mod (mix) and alpha-carrying score_mod (scale) compute SPEC §2.3's modes."""
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


def test_every_implementation_has_a_row_with_its_reason(tmp_path):
    md, js, png = tmp_path / "p.md", tmp_path / "p.json", tmp_path / "p.png"
    argv = ["--quick", "--T", "4", "--frames-total", "8", "--cases", "temporal,st_pool", "--impls",
            "stquery,eager,head-fold,xformers,flash,torch-mean", "--budget-ms", "1", "--quiet",
            "--json", str(js), "--markdown", str(md)]
    try:
        import matplotlib  # noqa: F401
        argv += ["--plot", str(png)]
    except ImportError:
        png = None
    assert profile.main(argv) == 0
    text = md.read_text()
    for name in ("stquery-torch", "stquery-triton", "stquery-cuda", "eager-permute", "head-fold", "xformers",
                 "flash-attn", "torch-mean"):
        assert f"| {name} |" in text, name
    data = json.loads(js.read_text())
    assert data["device"]["copy_gbps"] > 0 and data["device"]["matmul_tflops"] > 0
    failed = [r for r in data["rows"] if not r["ok"]]
    assert failed and all(r["reason"] for r in failed)
    for r in failed:  # each failure's reason is in the table
        assert r["reason"][:60].replace("|", "\\|") in text
    triton_rows = [r for r in data["rows"] if r["impl"] == "stquery-triton"]
    assert triton_rows and not any(r["ok"] for r in triton_rows)  # never timed in the interpreter on CPU
    if png is not None:
        assert png.stat().st_size > 1000


def test_triton_interpreter_is_never_timed(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    case = profile.make_cases()["st_pool"]
    impl = next(i for i in case.impls if i.name == "stquery-triton")
    s = profile.Shape(1, 2, 1, 1, 1, 2, 4)
    with pytest.raises(profile.Unavailable, match="interpreter"):
        impl.build(profile.make_inputs(case, s, CPU, torch.float32, "fwd"), s)


def test_unregistered_backend_says_so(monkeypatch):
    import stquery.backends as sb

    monkeypatch.setattr(sb, "names", lambda: ["torch"])
    case = profile.make_cases()["st_pool"]
    impl = next(i for i in case.impls if i.name == "stquery-cuda")
    s = profile.Shape(1, 2, 1, 1, 1, 2, 4)
    with pytest.raises(profile.Unavailable, match="not registered"):
        impl.build(profile.make_inputs(case, s, CPU, torch.float32, "fwd"), s)


def test_speedup_is_over_the_best_peer():
    R = profile.Row
    rows = [R("c", "s", "fwd", 4, 1, "stquery-x", "stquery", True, ms=1.0),
            R("c", "s", "fwd", 4, 1, "peer-a", "peer", True, ms=2.0),
            R("c", "s", "fwd", 4, 1, "peer-b", "peer", True, ms=4.0),
            R("c", "s", "fwd", 4, 1, "peer-c", "peer", False, reason="not installed"),
            R("c", "s", "fwd", 8, 1, "stquery-x", "stquery", True, ms=1.0)]  # no peer ran at T=8
    profile._fill_speedups(rows)
    assert [r.speedup for r in rows] == [2.0, 1.0, 0.5, None, None]


def test_markdown_collapses_a_failure_that_is_the_same_at_every_T():
    dev = profile.DeviceInfo("cpu", "cpu", 10.0, 0.1, "float32")
    cfg = dataclasses.replace(TINY, sweeps=("fixed-B",), passes=("fwd",))
    R = profile.Row
    rows = [R("topk", "fixed-B", "fwd", T, 1, "torch-topk", "peer", True, ms=1.0, p20=0.9, p80=1.1, gbps=1.0,
              pct_bw=10.0, tflops=0.0, pct_roofline=10.0, speedup=1.0) for T in (4, 8)]
    rows += [R("topk", "fixed-B", "fwd", T, 1, "stquery-cuda", "stquery", False, reason="no CUDA") for T in (4, 8)]
    text = profile.markdown(dev, cfg, rows)
    assert text.count("can't run: no CUDA") == 1
    assert "| all | | stquery-cuda |" in text
    assert text.count("| torch-topk |") == 2


def test_register_adds_the_subcommand():
    parser = argparse.ArgumentParser(prog="stquery")
    profile.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["profile", "--quick", "--T", "4,16", "--cases", "topk", "--json"])
    assert args.func is profile.run
    cfg = profile.config_from_args(args, torch.device("cpu"))
    assert cfg.T == (4, 16) and cfg.cases == ("topk",) and cfg.quick and args.json == "-"
    full = profile.config_from_args(parser.parse_args(["profile"]), torch.device("cuda"))
    assert (full.dtype, full.L, full.H, full.d, full.frames_total) == ("bf16", 32, 12, 64, 2048)
    assert full.T == (4, 8, 16, 32, 64, 128, 256, 512, 1024)
    on_cpu = profile.config_from_args(parser.parse_args(["profile"]), torch.device("cpu"))
    assert on_cpu == profile.CPU and on_cpu.dtype == "fp32"
    with pytest.raises(SystemExit):
        parser.parse_args(["profile", "--cases", "nonsense"])
