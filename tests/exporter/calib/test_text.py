"""Per-layer ranks (exporter/ranks.py) and K=auto (exporter/auto.py)."""
from __future__ import annotations


import pytest

from exporter.errors import UserError


def test_heldout_windows_are_spread_over_the_file_after_the_calibration_tokens(tmp_path):
    from exporter.calib.text import spread_windows

    class Tok:   # one token per word
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [int(w) for w in text.split()]}
    f = tmp_path / "t.txt"
    f.write_text(" ".join(str(i) for i in range(10 * 2048 + 5)))
    ws = spread_windows(Tok(), str(f), 2048, 3 * 2048, sink=7)
    starts = [w[1] for w in ws]
    assert [w[0] for w in ws] == [7] * 3 and all(len(w) == 2049 for w in ws)
    assert starts == [2048, 5 * 2048, 9 * 2048]                 # first after calibration, last full window
    with pytest.raises(UserError, match="too short"):
        spread_windows(Tok(), str(f), 2048, 10 * 2048, sink=7)
