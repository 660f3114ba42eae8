"""pytest-benchmark files for stquery's ops and the peers they must beat (docs/profiling.md §6).

``pytest bench/ --benchmark-only`` times them; ``pytest bench/ --benchmark-disable`` runs each once
(CI: so they can't rot). Files are ``bench_*.py``, collected by :func:`pytest_collect_file` below
(so they never clash with ``tests/test_*.py``). Shapes: the headline GPU shape when CUDA is
available (bf16, B·T = 2048 frames, L = 32, H = 12, d = 64), tiny float32 ones on CPU.

Every benchmark is one (case, implementation, pass) of :mod:`stquery.profile.cases`, built and
checked by :mod:`stquery.profile.harness` — the same implementations the profile table shows — and
records in ``extra_info`` the roofline
counts (bytes, FLOPs) and, when timed, GB/s, TFLOP/s, % of the measured copy bandwidth and
% of the roofline bound. An implementation that can't run here (a backend without a kernel on this
device, a peer that is not installed) is skipped with its reason; any other error fails.
"""
from __future__ import annotations

import os

import pytest
import torch

from stquery import roofline
from stquery.profile import cases, harness
from stquery.profile.config import Shape
from stquery.profile.peers import Unavailable, dynamo_limits

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
# GPU: the profile's headline config at T = 16 (B·T = 2048 frames, 100 MB per q/k/v).
# CPU: tiny, so that one run of every benchmark takes seconds.
SHAPE = (Shape(B=128, T=16, L=32, H=12, d=64, P=64, C=1024) if DEVICE.type == "cuda"
         else Shape(B=2, T=8, L=4, H=2, d=16, P=8, C=32))


def pytest_collect_file(file_path, parent):
    # A file named on the command line is collected by pytest's own python plugin already.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session", autouse=True)
def _session_setup():
    """Dynamo limits as in the profile; on CPU one thread (as ``stquery profile --quick``): tiny ops on a
    shared CPU otherwise spend milliseconds in OpenMP barriers, which measures the neighbours, not the op."""
    threads = torch.get_num_threads()
    if DEVICE.type == "cpu":
        torch.set_num_threads(1)
    try:
        with dynamo_limits():
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def device_rates():
    """``(copy GB/s, matmul TFLOP/s)`` of this device, measured once per session."""
    if DEVICE.type == "cuda":
        return roofline.copy_bandwidth(DEVICE), roofline.matmul_rate(DEVICE, DTYPE)
    return roofline.copy_bandwidth(DEVICE, 16 << 20, reps=3), roofline.matmul_rate(DEVICE, torch.float32, 256, reps=3)


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def record(benchmark, cost: roofline.Cost, rates, **info) -> None:
    """Roofline numbers into ``benchmark.extra_info`` (rates only when the benchmark was timed)."""
    bw, tflops = rates
    benchmark.extra_info.update(info, bytes=cost.bytes, flops=cost.flops, device=str(DEVICE),
                                dtype=str(DTYPE).replace("torch.", ""), copy_gbps=bw, matmul_tflops=tflops)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        seconds = stats.stats.median
        gbps, achieved = cost.bytes / seconds / 1e9, cost.flops / seconds / 1e12
        # As in the profile's report: a peak is at least what a measured call reached, so no % exceeds 100.
        bw, tflops = max(bw, gbps), max(tflops, achieved)
        benchmark.extra_info.update(
            gbps=gbps, pct_bw=100 * gbps / bw, tflops=achieved,
            pct_roofline=100 * roofline.roofline_fraction(cost, seconds, bw, tflops),
        )


@pytest.fixture
def run_case(benchmark, device_rates):
    """``run_case(case, impl, passes)``: benchmark one implementation of a profile case on SHAPE."""

    def run(case_name: str, impl_name: str, passes: str, shape: Shape = SHAPE):
        case = cases.make_cases()[case_name]
        impl = next(i for i in case.impls if i.name == impl_name)
        torch.manual_seed(0)
        inp = harness.make_inputs(case, shape, DEVICE, DTYPE, passes)
        try:
            call, note, out = harness.prepare(case, impl, inp, shape, passes)
        except Unavailable as e:
            pytest.skip(f"{impl_name}: {e}")
        except Exception as e:
            from stquery import BackendUnavailable

            if isinstance(e, BackendUnavailable):
                pytest.skip(f"{impl_name}: {e}")
            raise
        if out is not None:  # a benchmark of a wrong result is worthless
            with torch.no_grad():
                err, ok = harness.check(out, case.reference(inp, shape), DTYPE)
            assert ok, f"{impl_name} disagrees with stquery.ops.reference: relative max error {err:.2e}"

        def timed():
            call()
            _sync()

        benchmark.group = f"{case_name} {passes}"
        benchmark(timed)
        record(benchmark, case.cost(shape, inp[case.grad_inputs[0]].element_size(), passes), device_rates,
               case=case_name, impl=impl_name, passes=passes, note=note, shape=str(shape))

    return run


@pytest.fixture
def stquery_backend_env(monkeypatch):
    """Force a backend for code without a ``backend=`` argument (models), through ``$STQUERY_BACKEND``."""

    def use(name: str):
        import stquery.backends as sb

        if name not in sb.names():
            pytest.skip(f"backend {name!r} is not registered (stquery.backends.names() = {sb.names()})")
        if name == "triton" and DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            pytest.skip("TRITON_INTERPRET=1: the Triton interpreter is a correctness tool, not a speed")
        if name == "cuda" and DEVICE.type == "cpu":
            pytest.skip("on CPU the cuda backend runs only under its emulation, a correctness tool, not a speed")
        monkeypatch.setenv("STQUERY_BACKEND", name)

    return use
