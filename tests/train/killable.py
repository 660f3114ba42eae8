"""``stquery`` that stops at a chosen point and waits there to be killed (by the test, with SIGKILL).

    python killable.py WHERE:N MARKER stquery-arguments...

``WHERE``: ``step`` (just before optimizer step N), ``torn`` (the N-th checkpoint's weights file
written only half, still in its temporary folder), ``latest`` (the N-th checkpoint renamed into
place, ``latest`` not yet updated). On reaching it the process writes MARKER and sleeps.
Test-only: it patches the functions it stops in, nothing in stquery knows about it.
"""
import sys
import time
from pathlib import Path

import torch

from stquery.cli import main
from stquery.train import checkpoint


def _stop_here(marker: str) -> None:
    Path(marker).write_text("stopped\n")
    time.sleep(600)
    sys.exit("killable.py: not killed within 600 s")


def _on_nth_call(owner, name: str, n: int, marker: str, before: bool, then=None) -> None:
    real = getattr(owner, name)
    calls = [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if before and calls[0] == n:
            _stop_here(marker)
        result = real(*args, **kwargs)
        if not before and calls[0] == n:
            then(*args)
            _stop_here(marker)
        return result

    setattr(owner, name, wrapped)


def _tear(tensors, path) -> None:
    size = Path(path).stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)


if __name__ == "__main__":
    where, n = sys.argv[1].split(":")
    marker = sys.argv[2]
    if where == "step":
        _on_nth_call(torch.optim.AdamW, "step", int(n), marker, before=True)
    elif where == "torn":
        _on_nth_call(checkpoint, "save_file", int(n), marker, before=False, then=_tear)
    elif where == "latest":
        _on_nth_call(checkpoint, "_write_latest", int(n), marker, before=True)
    else:
        sys.exit(f"killable.py: unknown stopping point {where!r}")
    sys.exit(main(sys.argv[3:]))
