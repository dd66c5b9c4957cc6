"""python -m validate.families: one row per family, the table docs/families.md quotes."""
from __future__ import annotations

from validate.families import main


def test_families_prints_a_passing_row(tmp_path, capsys):
    assert main(["--arch", "qwen2_window", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("| qwen2_window"))
    assert "greedy equal" in row and "greedy 65/65" in row and "12 (11)" in row and "(WINDOW_CACHE=full)" in row
