"""benchmarks/llama_cpp_peer.py: what it reads off llama.cpp's output, and a child's own peak memory."""
from __future__ import annotations

import sys

import pytest

from benchmarks.llama_cpp_peer import kv_bytes_per_token, run_measured


def test_kv_bytes_per_token_from_the_gguf(tmp_path):
    import gguf
    path = str(tmp_path / "m.gguf")
    w = gguf.GGUFWriter(path, "llama")                  # SmolLM2's attention shapes, no tensors needed
    w.add_block_count(30), w.add_embedding_length(576), w.add_head_count(9), w.add_head_count_kv(3)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.close()
    got = {c: kv_bytes_per_token(path, c) for c in ("f16", "q8_0", "q4_0")}
    assert got == {"f16": 23040, "q8_0": 12240, "q4_0": 6480}     # 11,520 numbers: 2, 34/32 and 18/32 bytes each


def test_run_measured_gives_the_childs_own_peak_and_fails_in_one_line():
    out, _, small = run_measured([sys.executable, "-c", "print('x')"])
    _, _, big = run_measured([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'1' * len(b[::4096])"])
    assert out.strip() == "x" and big > small + 0.25          # GiB: the 300 MiB child, not the largest so far
    with pytest.raises(SystemExit, match="exit 3"):
        run_measured([sys.executable, "-c", "import sys; sys.exit(3)"])
