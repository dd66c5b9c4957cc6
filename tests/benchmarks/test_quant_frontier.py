"""benchmarks/quant_frontier.py keeps a scored row past the machine that built it: the row is recorded in
--records, a later call on an empty --out prints it without rebuilding, and a record measured on other token
counts is not taken for this call's row. No export runs here: the kept export and reports are written by hand
in the shapes exporter and validate leave, and any command the benchmark would run fails the test."""
import json
import os

import pytest

from benchmarks import quant_frontier
from exporter.options import DEFAULT_EVAL


def _report(text, tokens, increase):
    return {"model": "tiny", "asked": {"text": os.path.basename(str(text)), "tokens": tokens},
            "quality": {"ppl_original": 20.0, "ppl_increase_pct": increase, "kl_mean": 0.01, "top1_agreement": 0.95},
            "parity": {"passed": True, "kl_mean": 1e-3, "kl_cost": 0.02},
            "kv": {"measured": 2880.0, "original_fp16": 23040.0}}


def _kept_export(out, name):
    """An export directory of the row's arguments with both reports kept, as a finished row leaves it."""
    os.makedirs(os.path.join(out, name))
    open(os.path.join(out, name, "model.onnx"), "w").close()
    with open(os.path.join(out, f"{name}.args.json"), "w") as f:
        json.dump({"args": quant_frontier.row_args(name, None), "seconds": 12, "commit": "abc1234"}, f)
    for label, text, tokens, increase in [("wikitext2", DEFAULT_EVAL, 64, 2.5),
                                          ("second", quant_frontier.SECOND, 32, 7.5)]:
        with open(os.path.join(out, name, f"report-{label}.json"), "w") as f:
            json.dump(_report(text, tokens, increase), f)


@pytest.fixture
def no_commands(monkeypatch):
    def refuse(cmd, log):
        raise AssertionError(f"the benchmark ran {cmd}")
    monkeypatch.setattr(quant_frontier, "run", refuse)


def test_a_recorded_row_is_kept_without_its_build(tmp_path, no_commands, capsys):
    first, records = tmp_path / "first", tmp_path / "records"
    _kept_export(first, "codec-8")
    args = ["--rows", "codec-8", "--eval-tokens", "64", "--second-tokens", "32", "--records", str(records)]
    assert quant_frontier.main(args + ["--out", str(first)]) == 0
    row = json.load(open(records / "codec-8.json"))
    assert row["commit"] == "abc1234" and row["wikitext2"]["ppl_increase_pct"] == 2.5
    assert row["second"]["x_fewer"] == 8.0
    capsys.readouterr()

    # a new machine: nothing in --out, the record alone
    assert quant_frontier.main(args + ["--out", str(tmp_path / "second")]) == 0
    printed = capsys.readouterr().out
    assert "| codec-8 | spectral codec | 2,880.0 | 8.00 | +2.50 % |" in printed and "abc1234" in printed
    assert open(tmp_path / "second" / "frontier.md").read() == printed[:-1]  # print adds a newline


def test_a_record_of_other_token_counts_is_not_this_rows(tmp_path, no_commands):
    first, records = tmp_path / "first", tmp_path / "records"
    _kept_export(first, "codec-8")
    quant_frontier.main(["--rows", "codec-8", "--eval-tokens", "64", "--second-tokens", "32",
                         "--records", str(records), "--out", str(first)])
    with pytest.raises(AssertionError, match="ran"):      # scored on more tokens: it has to be built again
        quant_frontier.main(["--rows", "codec-8", "--eval-tokens", "128", "--second-tokens", "32",
                             "--records", str(records), "--out", str(tmp_path / "second")])
