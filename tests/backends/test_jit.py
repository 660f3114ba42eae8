"""The one just-in-time build helper of the compiled backends (stquery/backends/jit.py): its cache
key, and that ``import stquery`` leaves ``torch.utils.cpp_extension`` (and setuptools) unimported."""
import re
import subprocess
import sys

from stquery.backends import cpu_backend, cuda_backend, jit


def test_build_name_hashes_sources_key_and_nothing_else():
    files = [jit.source_dir() / "cpu_bindings.cpp", jit.source_dir() / "common" / "cpu_math.h"]
    name = jit.build_name("stquery_x", files, ["-O3", "AVX2"])
    assert re.fullmatch(r"stquery_x_[0-9a-f]{16}", name)
    assert name == jit.build_name("stquery_x", files, ["-O3", "AVX2"])
    assert name != jit.build_name("stquery_x", files, ["-O3", "AVX512"])
    assert name != jit.build_name("stquery_x", files[:1], ["-O3", "AVX2"])


def test_each_build_hashes_exactly_the_headers_it_includes():
    cpu = {p.name for p in jit.closure(jit.source_dir() / f for f in cpu_backend.SOURCES)}
    assert {"cpu_bindings.cpp", "attention_cpu.cpp", "attention_cpu.h", "cpu_math.h"} <= cpu
    assert not {"cuda_emu.h", "cuda_compat.h"} & cpu
    cuda = {p.name for p in jit.closure(cuda_backend.sources())}
    assert {"cuda_emu.h", "cuda_compat.h", "reduce.cuh", "bindings.h"} <= cuda
    assert not {"cpu_math.h", "attention_cpu.h"} & cuda
    assert cpu_backend.build_name() == jit.build_name(
        "stquery_cpu", jit.closure(jit.source_dir() / f for f in cpu_backend.SOURCES), [*cpu_backend.cflags(), *jit.cpu_isa()])


def test_import_stquery_does_not_import_the_build_tools():
    code = "import sys, stquery; print(sorted(m for m in ('torch.utils.cpp_extension', 'setuptools') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
