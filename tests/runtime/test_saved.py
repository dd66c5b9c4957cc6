"""runtime/saved.py: a generation saved to a file and resumed gives the tokens of a call that never stopped."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from runtime import Generator
from runtime.cli import main as cli_main
from tests import toy_graph as T

NO_STOP = []


def save_and_resume(gen, path, prompts, first, then, **kw):
    """generate `first` tokens keeping the state, save it, load it back, go on for `then` more."""
    a = gen.generate(prompts, max_new_tokens=first, keep_state=True, **kw)
    gen.save_state(str(path), a.state)
    state = gen.load_state(str(path), max_new_tokens=then)
    b = gen.generate(None, max_new_tokens=then, resume=state, **kw)
    return a, b


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "top_k": 5, "seed": 3}])
def test_resuming_gives_the_tokens_of_an_unbroken_call(gen, tmp_path, sampling):
    prompts = ["the cat sat on the mat", "dog"]                        # left-padded batch of two lengths
    whole = gen.generate(prompts, max_new_tokens=24, stop_token_ids=NO_STOP, **sampling)
    a, b = save_and_resume(gen, tmp_path / "s.kvs", prompts, 10, 14, stop_token_ids=NO_STOP, **sampling)
    assert [x + y for x, y in zip(a.tokens, b.tokens)] == whole.tokens
    assert b.prompt_tokens == [p + t for p, t in zip(a.prompt_tokens, a.tokens)]
    assert "".join([a.texts[0], b.texts[0]]) == whole.texts[0]        # text streamed on from where it was


def test_a_continuation_goes_on_the_sequence(toy, gen, tmp_path):
    a = gen.generate(["the cat"], max_new_tokens=3, stop_token_ids=NO_STOP, keep_state=True)
    gen.save_state(str(tmp_path / "s"), a.state)
    more = T.token_ids("sat on the")
    b = gen.generate([more], max_new_tokens=8, stop_token_ids=NO_STOP,
                     resume=gen.load_state(str(tmp_path / "s"), [more], max_new_tokens=8))
    history = [T.SINK_ID] + T.token_ids("the cat") + a.tokens[0] + more
    assert b.tokens[0] == T.reference_greedy(toy[1], history, 8)
    assert b.prompt_tokens[0] == history


def test_finished_sequences_stay_finished_unless_continued(toy, gen, tmp_path):
    a = gen.generate(["dog", "the cat sat on"], max_new_tokens=25, keep_state=True)   # 'dog' meets eos
    assert a.finish_reasons == ["stop", "length"]
    gen.save_state(str(tmp_path / "s"), a.state)
    b = gen.generate(None, max_new_tokens=4, resume=gen.load_state(str(tmp_path / "s"), max_new_tokens=4))
    assert b.tokens[0] == [] and b.finish_reasons[0] == "stop" and len(b.tokens[1]) == 4
    more = [T.token_ids("the")] * 2
    c = gen.generate(more, max_new_tokens=4, stop_token_ids=NO_STOP,
                     resume=gen.load_state(str(tmp_path / "s"), more, max_new_tokens=4))
    woken = [T.SINK_ID] + T.token_ids("dog") + a.tokens[0] + [T.EOS_ID] + more[0]   # its stop token is fed
    assert c.prompt_tokens[0] == woken and c.tokens[0] == T.reference_greedy(toy[1], woken, 4)


def test_the_file_is_the_same_bytes_each_time_and_smaller_than_the_cache(gen, tmp_path):
    a = gen.generate(["the cat sat on the mat"] * 3, max_new_tokens=30, stop_token_ids=NO_STOP, keep_state=True)
    size, cache_bytes = gen.save_state(str(tmp_path / "1"), a.state)
    gen.save_state(str(tmp_path / "2"), a.state)
    assert (tmp_path / "1").read_bytes() == (tmp_path / "2").read_bytes()
    assert size == (tmp_path / "1").stat().st_size and size < cache_bytes    # three equal rows compress


def test_files_of_other_exports_or_damaged_ones_are_refused(gen, tmp_path):
    a = gen.generate(["dog"], max_new_tokens=3, keep_state=True)
    path = str(tmp_path / "s")
    gen.save_state(path, a.state)
    other = dataclasses.replace(gen.metadata, model={**gen.metadata.model, "fingerprint": "another"})
    from runtime.saved import load_state
    with pytest.raises(ValueError, match="saved by another export"):
        load_state(path, other, gen.device, room=4)
    (tmp_path / "bad").write_bytes(b"not a session")
    for bad, match in ((tmp_path / "bad", "not a saved session"), (tmp_path / "none", "no saved session")):
        with pytest.raises(ValueError, match=match):
            gen.load_state(str(bad))
    with pytest.raises(ValueError, match="one per sequence"):
        gen.generate([[1], [2]], resume=gen.load_state(path))


def test_cli_saves_and_goes_on(toy, gen, tmp_path, capsys):
    path = str(tmp_path / "chat.kvs")
    whole = gen.generate(["the cat"], max_new_tokens=12, stop_token_ids=NO_STOP).texts[0]
    assert cli_main(["--export", toy[0], "--prompt", "the cat", "--max-new-tokens", "5", "--save-cache", path]) == 0
    first = capsys.readouterr().out.splitlines()
    assert first[-1].startswith(f"saved 7 tokens per sequence to {path}")
    assert cli_main(["--export", toy[0], "--load-cache", path, "--max-new-tokens", "7"]) == 0
    second = capsys.readouterr().out.splitlines()
    assert first[0] + second[0] == whole
    assert cli_main(["--export", toy[0], "--load-cache", str(tmp_path / "nope")]) == 2
    assert "no saved session" in capsys.readouterr().err


@pytest.mark.slow
def test_an_int8_shared_buffer_resumes_exactly(tiny_export, tmp_path):
    from tests.helpers import equal_prompts
    export = tiny_export("llama", "full", "pre-rope", cache="shared-buffer", kv_dtype="int8", kv_rotation="hadamard",
                         kv_kernel="codes")
    gen = Generator(export, provider="cpu")
    prompts = [p[1:] for p in equal_prompts(gen.metadata.sink["token_id"], n=2, length=21, seed=1)]
    whole = gen.generate(prompts, max_new_tokens=12, stop_token_ids=NO_STOP)
    a, b = save_and_resume(gen, tmp_path / "s", prompts, 5, 7, stop_token_ids=NO_STOP)
    assert [x + y for x, y in zip(a.tokens, b.tokens)] == whole.tokens
    assert b.state is None and np.asarray(a.state.cache.arrays()["past_key_values.0.key"]).dtype == np.int8
