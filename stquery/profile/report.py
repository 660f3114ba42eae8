"""What a profile run tells: rates and ranks from the timed rows, the summary, markdown, JSON and the plot.

%BW and %roof are taken against the best rates this machine was seen to reach, never a datasheet:
``peak GB/s = max(measured copy bandwidth, best GB/s of any row)`` and ``peak TFLOP/s =
max(measured matmul rate, best TFLOP/s of any row)``, so no row is above 100 %. The markdown says
which of the two set each peak.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys

import torch

from .. import roofline
from .._optional import require
from .cases import make_cases
from .config import Config
from .harness import DeviceInfo, Row

COLUMNS = ("T", "B", "impl", "ms", "p20", "p80", "GB/s", "%BW", "TFLOP/s", "%roof", "peak MiB", "×best peer",
           "≥×peers", "note")


def spread(r: Row) -> float:
    """p20–p80 width over the median."""
    return (r.p80 - r.p20) / r.ms


def rank(dev: DeviceInfo, rows: list, max_spread: float) -> None:
    """Fill in the rates, %BW, %roof, the wide-spread mark, the speedup over the best peer and the
    speedup it has at least.

    A row whose spread exceeds ``max_spread`` is marked ``wide``. The yardstick of a shape is its
    fastest peer (by median): a row gets ``speedup`` = that peer's median over its own when neither
    of the two is wide, and none otherwise (a slower, narrower peer would overstate it). Every row,
    wide or not, gets ``at_least``: the fastest batches of every other peer (their p20) over its own
    slowest (its p80), a bound that noise, which only slows calls, can only lower.
    """
    ok = [r for r in rows if r.ok]
    for r in ok:
        r.gbps, r.tflops = r.bytes / r.ms / 1e6, r.flops / r.ms / 1e9
        r.wide = spread(r) > max_spread
    best_bw = max((r.gbps for r in ok), default=0.0)
    best_fl = max((r.tflops for r in ok), default=0.0)
    dev.peak_gbps, dev.peak_tflops = max(dev.copy_gbps, best_bw), max(dev.matmul_tflops, best_fl)
    dev.peak_note = (f"GB/s peak {dev.peak_gbps:.3g} from {'the copy' if dev.peak_gbps == dev.copy_gbps else 'the best row'}, "
                     f"TFLOP/s peak {dev.peak_tflops:.3g} from {'the matmul' if dev.peak_tflops == dev.matmul_tflops else 'the best row'}")
    groups: dict = {}
    for r in ok:
        r.pct_bw = 100 * r.gbps / dev.peak_gbps
        r.pct_roofline = 100 * roofline.roofline_fraction(roofline.Cost(r.bytes, r.flops), r.ms / 1e3,
                                                           dev.peak_gbps, dev.peak_tflops)
        groups.setdefault((r.case, r.sweep, r.passes, r.T, r.B), []).append(r)
    for group in groups.values():
        peers = [r for r in group if r.kind == "peer"]
        best = min(peers, key=lambda p: p.ms, default=None)
        for r in group:
            r.speedup = best.ms / r.ms if best and not (best.wide or r.wide) else None
            others = [p.p20 for p in peers if p is not r]
            r.at_least = min(others) / r.p80 if others else None


def _geomean(xs: list) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def summary(rows: list) -> list:
    """Per case and pass (after :func:`rank`): stquery's best backend (the fastest stquery row of
    each shape) against the best peer, as the geometric mean of its ``speedup`` over the shapes
    where it has one (neither spread wide); and ``at_least``, the smallest of its ``at_least`` over
    every shape, wide or not. Returns a list of dicts."""
    out: dict = {}
    for r in rows:
        out.setdefault((r.case, r.passes), {}).setdefault((r.T, r.B), {})[r.impl] = r  # a shared shape once
    result = []
    for (case, passes), shapes in out.items():
        ratios, lows, highs, stq_wins, peer_wins, wide, bounds = [], [], [], {}, {}, 0, []
        for by_impl in shapes.values():
            ran = [r for r in by_impl.values() if r.ok]
            stq = min((r for r in ran if r.kind == "stquery"), key=lambda r: r.ms, default=None)
            peer = min((r for r in ran if r.kind == "peer"), key=lambda r: r.ms, default=None)
            if stq is None or peer is None:
                continue
            bounds.append(stq.at_least)
            if stq.speedup is None:
                wide += 1
                continue
            ratios.append(stq.speedup)
            lows.append(peer.p20 / stq.p80)
            highs.append(peer.p80 / stq.p20)
            stq_wins[stq.impl] = stq_wins.get(stq.impl, 0) + 1
            peer_wins[peer.impl] = peer_wins.get(peer.impl, 0) + 1
        result.append(dict(case=case, passes=passes, shapes=len(shapes), compared=len(ratios), wide=wide,
                           stquery=max(stq_wins, key=stq_wins.get, default=None),
                           peer=max(peer_wins, key=peer_wins.get, default=None),
                           speedup=_geomean(ratios) if ratios else None,
                           low=_geomean(lows) if ratios else None, high=_geomean(highs) if ratios else None,
                           at_least=min(bounds, default=None), bounded=len(bounds)))
    return result


def summary_text(rows: list) -> str:
    """The summary as a fixed-width table (what ``stquery profile`` prints at the end)."""
    lines = [f"{'case':<15} {'pass':<8} {'stquery best':<15} {'best peer':<14} {'speedup (p20-p80)':<20} "
             f"{'shapes':<12} at least", "-" * 98]
    for s in summary(rows):
        ratio = "—" if s["speedup"] is None else f"{s['speedup']:.2f}x ({s['low']:.2f}-{s['high']:.2f})"
        shapes = f"{s['compared']}/{s['shapes']}" + (f", {s['wide']} wide" if s["wide"] else "")
        bound = "—" if s["at_least"] is None else f"{s['at_least']:.2f}x in {s['bounded']}/{s['shapes']}"
        lines.append(f"{s['case']:<15} {s['passes']:<8} {s['stquery'] or '—':<15} {s['peer'] or '—':<14} {ratio:<20} "
                     f"{shapes:<12} {bound}")
    lines.append("speedup: best peer's ms over stquery's best backend's, geometric mean over the shapes compared; "
                 "'wide': shapes left out because that backend's or the best peer's p20-p80 spread was too wide; "
                 "at least: the smallest, over every shape, of the lowest peer p20 over that backend's p80.")
    return "\n".join(lines)


def _f(x, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _row_line(r: Row) -> str:
    note = r.note
    if r.wide:
        note = f"WIDE SPREAD (p20–p80 = {100 * spread(r):.0f}% of the median)" + (f"; {note}" if note else "")
    return (f"| {r.T} | {r.B} | {r.impl} | {r.ms:.4g} | {r.p20:.4g} | {r.p80:.4g} | {_f(r.gbps, '.3g')} | "
            f"{_f(r.pct_bw, '.3g')} | {_f(r.tflops, '.3g')} | {_f(r.pct_roofline, '.3g')} | {_f(r.peak_mib, '.1f')} | "
            f"{_f(r.speedup, '.2f')} | {_f(r.at_least, '.2f')} | {_escape(note)} |")


def _table(group: list) -> list:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if c in ("impl", "note") else "---:" for c in COLUMNS) + "|"]
    # An implementation that fails the same way at every T gets one row, not one per T.
    impls = list(dict.fromkeys(r.impl for r in group))
    always = {i for i in impls if len({(r.ok, r.reason) for r in group if r.impl == i}) == 1
              and not next(r for r in group if r.impl == i).ok}
    for r in group:
        if r.impl in always:
            continue
        lines.append(_row_line(r) if r.ok else
                     f"| {r.T} | {r.B} | {r.impl} |{' — |' * 10} can't run: {_escape(r.reason[:300])} |")
    for i in impls:
        if i in always:
            r = next(r for r in group if r.impl == i)
            lines.append(f"| all | | {i} |{' — |' * 10} can't run: {_escape(r.reason[:300])} |")
    return lines + [""]


def markdown(dev: DeviceInfo, cfg: Config, rows: list, started: str = "") -> str:
    """The summary and every table (one per case, sweep and pass)."""
    titles = {name: c.title for name, c in make_cases(cfg.flex_dynamic).items()}
    lines = [
        f"# stquery profile{(' — ' + started) if started else ''}",
        "",
        f"- device: **{dev.name}**; measured copy bandwidth {dev.copy_gbps:.3g} GB/s (read + write), "
        f"matmul {dev.matmul_tflops:.3g} TFLOP/s ({dev.matmul_dtype}); {dev.peak_note}",
        f"- torch {torch.__version__}; dtype {cfg.dtype}; L={cfg.L}, H={cfg.H}, d={cfg.d}; selection/pool P={cfg.P}, "
        f"C={cfg.C}, k = T·P/{cfg.topk_div}; fixed-B sweep B={cfg.batch}, fixed-BT sweep B·T={cfg.frames_total}; "
        f"T = {', '.join(map(str, cfg.T))}; FlexAttention compiled with {'dynamic' if cfg.flex_dynamic else 'static'} shapes",
        f"- ms: {dev.timer or 'time'}, median (p20, p80) of the per-call time over {cfg.samples} batches of at least {cfg.batch_ms:g} ms each, "
        "the implementations of a shape taking turns; a row whose p20–p80 spread exceeds "
        f"{100 * cfg.max_spread:.0f}% of its median is marked WIDE SPREAD. GB/s and TFLOP/s from the "
        "roofline counts of docs/profiling.md §6 (stquery/roofline.py); %BW and %roof against the peaks above "
        "(the best this machine was seen to reach); %roof: max(bytes/BW, FLOPs/peak) over the measured time; "
        "peak MiB: inputs + the call's own allocations (CUDA only); ×best peer: the fastest peer's median "
        "over this row's, where neither is WIDE; ≥×peers: the fastest p20 of the other peers, wide or not, "
        "over this row's p80, the speedup this row has at least.",
        "",
        "## Summary",
        "",
        "```",
        summary_text(rows),
        "```",
        "",
    ]
    for case in dict.fromkeys(r.case for r in rows):
        lines += [f"## {case}: {titles.get(case, case)}", ""]
        for sweep in cfg.sweeps:
            for passes in cfg.passes:
                group = [r for r in rows if r.case == case and r.sweep == sweep and r.passes == passes]
                if group:
                    label = f"B = {cfg.batch}" if sweep == "fixed-B" else f"B·T = {cfg.frames_total}"
                    lines += [f"### {case} · {sweep} ({label}) · {passes}", ""] + _table(group)
    return "\n".join(lines)


def to_json(dev: DeviceInfo, cfg: Config, rows: list, started: str = "") -> dict:
    return {
        "started": started,
        "torch": torch.__version__,
        "device": dataclasses.asdict(dev),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "summary": summary(rows),
        "rows": [dataclasses.asdict(r) for r in rows],
    }


def from_json(paths) -> tuple:
    """``(device, config, rows, started)`` of earlier runs' JSON, merged (device and config of the
    first; cases in file order), ranked again over all the rows."""
    dev = cfg = None
    rows, started, cases = [], "", []
    fields = {f.name for f in dataclasses.fields(Config)}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        if dev is None:
            dev = DeviceInfo(**data["device"])
            conf = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data["config"].items() if k in fields}
            cfg, started = Config(**conf), data.get("started", "")
        elif data["device"]["name"] != dev.name:
            print(f"stquery profile: {path} is from {data['device']['name']}, not {dev.name}", file=sys.stderr)
        rows += [Row(**r) for r in data["rows"]]
        cases += [c for c in data["config"]["cases"] if c not in cases]
    rank(dev, rows, cfg.max_spread)
    return dev, dataclasses.replace(cfg, cases=tuple(cases)), rows, started


def plot(rows: list, cfg: Config, path: str, title: str = "") -> None:
    """Log-log ms vs T, one line per implementation (stquery solid, peers dashed); one panel per
    (case, sweep, pass); a wide-spread point is drawn hollow."""
    matplotlib = require("matplotlib", extra="bench", feature="stquery profile's plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r.case for r in rows))
    cols = [(sw, ps) for sw in cfg.sweeps for ps in cfg.passes]
    fig, axes = plt.subplots(len(cases), len(cols), figsize=(4.2 * len(cols), 3.4 * len(cases)), squeeze=False)
    names = list(dict.fromkeys(r.impl for r in rows))
    colors = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    for i, case in enumerate(cases):
        for j, (sweep, passes) in enumerate(cols):
            ax = axes[i][j]
            group = [r for r in rows if r.case == case and r.sweep == sweep and r.passes == passes and r.ok]
            for name in dict.fromkeys(r.impl for r in group):
                pts = [r for r in group if r.impl == name]
                style = "-" if name.startswith("stquery") else "--"
                ax.plot([r.T for r in pts], [r.ms for r in pts], style, color=colors[name], label=name)
                ax.scatter([r.T for r in pts], [r.ms for r in pts], s=12, color=colors[name],
                           facecolors=["none" if r.wide else colors[name] for r in pts])
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            label = f"B={cfg.batch}" if sweep == "fixed-B" else f"B·T={cfg.frames_total}"
            ax.set_title(f"{case} · {label} · {passes}", fontsize=9)
            ax.set_xlabel("T (frames)", fontsize=8)
            ax.set_ylabel("ms", fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
            if group:
                ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97) if title else None)
    fig.savefig(path, dpi=110)
    plt.close(fig)
