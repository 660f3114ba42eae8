"""``stquery profile``: frame-count scaling of stquery's backends against the peers, in one run.

For each case (temporal attention plain / DAR mix p=3 / DAR scale p=3, top-k selection, st_pool),
each sweep (T = 4 … 1024 at fixed B, and at fixed B·T), each pass (forward, forward+backward) and
each implementation it reports ms (median, p20, p80 over timed batches), GB/s, TFLOP/s, % of the
roofline bound and the speedup over the best peer. Byte and FLOP counts are
:mod:`stquery.roofline`'s (docs/profiling.md §6). Every implementation gets a row: one that can't
run says why; every forward output is checked against ``stquery.ops.reference``.

The parts, each importable alone (``bench/`` uses the first three, never the command line):

- :mod:`.config` — problem sizes (:class:`~.config.Shape`) and run settings (:class:`~.config.Config`);
- :mod:`.cases` — what is measured: each case's inputs, cost, reference and implementations
  (stquery's backends and the peers of :mod:`.peers`);
- :mod:`.harness` — how it is measured: build, check, interleaved batch timing, device peaks;
- :mod:`.report` — markdown, JSON, plot, the printed summary;
- :mod:`.cli` — the ``stquery profile`` command.
"""
