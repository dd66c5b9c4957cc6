"""How a text becomes token windows (exporter/calib/text.py): held-out spreading and mixed texts."""
from __future__ import annotations


import pytest

from exporter.calib.text import MIX_CHUNK, file_sha256, text_ids, text_sha256, token_windows
from exporter.errors import UserError


class Tok:   # one token per word
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(w) for w in text.split()]}


def numbers(path, first, count):
    path.write_text(" ".join(str(i) for i in range(first, first + count)))
    return str(path)


def test_a_mix_takes_turns_of_a_window_from_each_file_from_its_start_fraction_on(tmp_path):
    a = numbers(tmp_path / "a.txt", 0, 3 * MIX_CHUNK)
    b = numbers(tmp_path / "b.txt", 100_000, 4 * MIX_CHUNK)
    ids = text_ids(Tok(), f"{a},{b}@0.5")                       # b from its 2 * MIX_CHUNK-th token on
    turns = [ids[i:i + MIX_CHUNK] for i in range(0, len(ids), MIX_CHUNK)]
    assert [t[0] for t in turns] == [0, 100_000 + 2 * MIX_CHUNK, MIX_CHUNK, 100_000 + 3 * MIX_CHUNK, 2 * MIX_CHUNK]
    assert len(ids) == 5 * MIX_CHUNK and len(set(ids)) == len(ids)     # every token once, a's last turn alone
    windows = token_windows(Tok(), f"{a},{b}@0.5", 2048, 4096, sink_id=7)
    assert [w[:2] for w in windows] == [[7, 0], [7, 100_000 + 2 * MIX_CHUNK]]


def test_a_mix_has_its_own_hash_and_one_file_keeps_the_file_hash(tmp_path):
    a = numbers(tmp_path / "a.txt", 0, 3000)
    b = numbers(tmp_path / "b.txt", 5000, 3000)
    assert text_sha256(a) == file_sha256(a) and text_ids(Tok(), a) == list(range(3000))
    hashes = {text_sha256(s) for s in (a, f"{a},{b}", f"{b},{a}", f"{a},{b}@0.5", f"{a}@0.5")}
    assert len(hashes) == 5
    assert text_sha256(f"{a},{b}@0.5") == text_sha256(f"{a}, {b}@0.5")          # spaces after commas are fine


def test_a_file_whose_name_holds_an_at_sign_is_that_file(tmp_path):
    odd = numbers(tmp_path / "mail@0.5.txt", 0, 100)
    assert text_ids(Tok(), odd) == list(range(100))
    assert text_ids(Tok(), f"{odd},{odd}") == list(range(100)) * 2


@pytest.mark.parametrize("spec, message", [
    ("{a},{a}@1.5", r"the part after @ is the fraction of the file's tokens to start from, 0 <= F < 1"),
    ("{a},{a}@half", r"the part after @ is the fraction"),
    ("{a},{missing}", r"no text file at .*missing.txt: pass CALIB=.*several as CALIB=a.txt,b.txt@0.5"),
])
def test_a_bad_mix_is_refused_with_the_fix(tmp_path, spec, message):
    a = numbers(tmp_path / "a.txt", 0, 100)
    with pytest.raises(UserError, match=message):
        text_ids(Tok(), spec.format(a=a, missing=tmp_path / "missing.txt"))


def test_heldout_windows_are_spread_over_the_file_after_the_calibration_tokens(tmp_path):
    from exporter.calib.text import spread_windows

    f = tmp_path / "t.txt"
    f.write_text(" ".join(str(i) for i in range(10 * 2048 + 5)))
    ws = spread_windows(Tok(), str(f), 2048, 3 * 2048, sink=7)
    starts = [w[1] for w in ws]
    assert [w[0] for w in ws] == [7] * 3 and all(len(w) == 2049 for w in ws)
    assert starts == [2048, 5 * 2048, 9 * 2048]                 # first after calibration, last full window
    with pytest.raises(UserError, match="too short"):
        spread_windows(Tok(), str(f), 2048, 10 * 2048, sink=7)
