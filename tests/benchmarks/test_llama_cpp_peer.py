"""benchmarks/llama_cpp_peer.py: what it reads off llama.cpp's output, and a child's own peak memory."""
from __future__ import annotations

import sys

import pytest

from benchmarks.llama_cpp_peer import kv_bytes_per_token, run_measured


def test_kv_bytes_per_token_from_its_log():
    log = ("llama_kv_cache:        CPU KV buffer size =   720.00 MiB\n"
           "llama_kv_cache: size =  720.00 MiB ( 32768 cells,  30 layers,  1/1 seqs), K (f16):  360.00 MiB, "
           "V (f16):  360.00 MiB\n")
    assert kv_bytes_per_token(log) == 23040                  # SmolLM2: 30 layers x 2 x 192 values x 2 bytes
    assert kv_bytes_per_token("no cache line") is None


def test_run_measured_gives_the_childs_own_peak_and_fails_in_one_line():
    out, _, small = run_measured([sys.executable, "-c", "print('x')"])
    _, _, big = run_measured([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'1' * len(b[::4096])"])
    assert out.strip() == "x" and big > small + 0.25          # GiB: the 300 MiB child, not the largest so far
    with pytest.raises(SystemExit, match="exit 3"):
        run_measured([sys.executable, "-c", "import sys; sys.exit(3)"])
