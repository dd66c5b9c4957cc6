"""runtime/: generation through IO binding on a toy export (tests/toy_graph.py) against a numpy reference."""
from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest

from graphs.metadata import ExportError
from runtime import Generator
from runtime.cache import KVCache
from runtime.forward import DecoderStep
from runtime.prompts import left_pad
from tests import toy_graph as T




PROMPTS = ["the cat sat on", "dog", "a big red", ""]


NO_STOP = []  # stop_token_ids that never stop, so runs compare with the reference token for token


def reference(weights, prompt: str, n: int) -> list[int]:
    return T.reference_greedy(weights, [T.SINK_ID] + T.token_ids(prompt), n)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_matches_reference(toy, gen, prompt):
    result = gen.generate([prompt], max_new_tokens=21, stop_token_ids=NO_STOP)
    assert result.tokens[0] == reference(toy[1], prompt, 21)
    assert result.prompt_tokens[0] == [T.SINK_ID] + T.token_ids(prompt)
    assert result.finish_reasons == ["length"]
    assert result.timings.decode_steps == 20 and result.timings.decode_tokens == 20
    assert result.timings.prefill_s > 0 and result.timings.decode_tokens_per_s > 0


def test_token_id_prompts_equal_text_prompts(gen):
    text = gen.generate(["the cat sat on"], max_new_tokens=8, stop_token_ids=NO_STOP)
    ids = gen.generate([T.token_ids("the cat sat on")], max_new_tokens=8, stop_token_ids=NO_STOP)
    assert ids.tokens == text.tokens and ids.prompt_tokens == text.prompt_tokens


def test_left_padded_batch_equals_each_prompt_alone(toy, gen):
    prompts = ["the cat sat on the mat", "dog", "a big red"]
    batch = gen.generate(prompts, max_new_tokens=21, stop_token_ids=NO_STOP)
    alone = [gen.generate([p], max_new_tokens=21, stop_token_ids=NO_STOP).tokens[0] for p in prompts]
    assert batch.tokens == alone == [reference(toy[1], p, 21) for p in prompts]
    assert batch.timings.decode_tokens == 3 * 20


def test_eos_stops_one_sequence_and_the_other_goes_on(toy, gen, monkeypatch):
    ref_dog = reference(toy[1], "dog", 25)
    assert T.EOS_ID in ref_dog  # the toy's greedy 'dog' continuation reaches eos
    fed = []
    real_step = gen.step
    monkeypatch.setattr(gen, "step", lambda ids, mask, cache: fed.append((ids, mask)) or real_step(ids, mask, cache))
    result = gen.generate(["dog", "the cat sat on"], max_new_tokens=25)  # default stop: export's eos
    assert result.tokens[0] == ref_dog[:ref_dog.index(T.EOS_ID)]
    assert result.tokens[1] == reference(toy[1], "the cat sat on", 25)
    assert result.finish_reasons == ["stop", "length"]
    stopped_at = ref_dog.index(T.EOS_ID) + 1  # the step fed after 'dog' sampled eos
    for ids, mask in fed[stopped_at:]:  # a finished sequence is fed pad, masked out
        assert ids[0, 0] == T.PAD_ID and mask[0, -1] == 0 and mask[1, -1] == 1
    assert fed[stopped_at - 1][1][0, -1] == 1


def test_stop_token_ids_stop(toy, gen):
    ref = reference(toy[1], "the cat sat on", 21)
    stop = ref[3]
    result = gen.generate(["the cat sat on"], max_new_tokens=21, stop_token_ids=[stop])
    assert result.tokens[0] == ref[:ref.index(stop)]
    assert result.finish_reasons == ["stop"]
    assert result.timings.decode_steps == ref.index(stop)  # nothing runs after the last sequence stops


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(gen):
    kwargs = dict(max_new_tokens=20, temperature=1.0, stop_token_ids=NO_STOP)
    a = gen.generate(PROMPTS[:2], seed=7, **kwargs)
    b = gen.generate(PROMPTS[:2], seed=7, **kwargs)
    c = gen.generate(PROMPTS[:2], seed=8, **kwargs)
    assert a.tokens == b.tokens and a.tokens != c.tokens
    nucleus = dict(temperature=0.8, top_k=5, top_p=0.9, stop_token_ids=NO_STOP, max_new_tokens=20)
    assert gen.generate(PROMPTS[:2], seed=3, **nucleus).tokens == gen.generate(PROMPTS[:2], seed=3, **nucleus).tokens
    greedy_run = gen.generate(PROMPTS, max_new_tokens=20, stop_token_ids=NO_STOP)
    top1 = gen.generate(PROMPTS, max_new_tokens=20, temperature=1.5, top_k=1, seed=1, stop_token_ids=NO_STOP)
    assert top1.tokens == greedy_run.tokens


def test_streaming_pieces_make_the_text(gen):
    seen = []
    result = gen.generate(["the cat", "dog"], max_new_tokens=12, stop_token_ids=NO_STOP,
                          on_token=lambda i, tok, piece: seen.append((i, tok, piece)))
    for i in range(2):
        assert [tok for j, tok, _ in seen if j == i] == result.tokens[i]
        assert "".join(piece for j, _, piece in seen if j == i) == result.texts[i]
    # the toy tokenizer joins words with spaces; the first piece gets its space from the prompt context
    assert result.texts[0] == "".join(" " + T.VOCAB[t] for t in result.tokens[0] if t >= len(T.SPECIAL))


def test_chat_wraps_the_prompt(toy, gen):
    result = gen.generate(["cat"], max_new_tokens=2, chat=True, stop_token_ids=NO_STOP)
    wrapped = T.CHAT["prefix"] + "cat" + T.CHAT["suffix"]
    assert result.prompt_tokens[0] == [T.SINK_ID] + T.token_ids(wrapped)
    with pytest.raises(TypeError):
        gen.generate([[5, 6]], max_new_tokens=2, chat=True)


def test_chat_without_template_names_the_fix(tmp_path):
    T.write_toy_export(str(tmp_path), chat=False)
    with pytest.raises(ExportError, match="no chat template"):
        Generator(str(tmp_path)).generate(["cat"], max_new_tokens=2, chat=True)


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_chunked_prefill_equals_one_shot(toy, chunk):
    """A left-padded batch fed in prompt chunks (the cache grows chunk by chunk) gives the reference tokens."""
    prompts = ["the cat sat on the mat", "dog", "a big red"]
    got = Generator(toy[0], provider="cpu", prefill_chunk=chunk).generate(prompts, max_new_tokens=12,
                                                                         stop_token_ids=NO_STOP)
    assert got.tokens == [reference(toy[1], p, 12) for p in prompts]
    with pytest.raises(ValueError, match="prefill_chunk"):
        Generator(toy[0], provider="cpu", prefill_chunk=-1)


def test_float16_cache(tmp_path, toy):
    weights = T.write_toy_export(str(tmp_path), dtype="float16")
    gen16 = Generator(str(tmp_path))
    batch = gen16.generate(PROMPTS[:3], max_new_tokens=21, stop_token_ids=NO_STOP)
    assert batch.tokens == [reference(weights, p, 21) for p in PROMPTS[:3]]
    cache = KVCache.empty(gen16.metadata.layout, 2, gen16.device)
    assert {v.data_type() for v in cache.values.values()} == {"tensor(float16)"}


def test_cache_is_the_present_outputs_without_copies(gen):
    ids, mask = left_pad([[T.SINK_ID, 5, 6, 7], [T.SINK_ID, 8]], T.PAD_ID)       # (2, 4)
    cache = KVCache.empty(gen.metadata.layout, 2, gen.device)
    step = DecoderStep(gen.session, gen.device)
    logits = step(ids, mask, cache)
    assert logits.shape == (2, len(T.VOCAB))
    assert cache.length == 4 and all(v.device_name() == "cpu" for v in cache.values.values())
    presents = step.binding.get_outputs()[1:]  # bound after logits, in layout order
    assert [v.data_ptr() for v in cache.values.values()] == [p.data_ptr() for p in presents]
    assert [v.shape() for v in cache.values.values()] == [[2, 1, 4, 9], [2, 1, 4, 6], [2, 2, 4, 4], [2, 2, 4, 4]]
    step(np.array([[9], [10]]), np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1), cache)
    assert cache.length == 5
    with pytest.raises(ValueError, match="attention_mask covers"):
        step(np.array([[9], [10]]), mask, cache)


def test_only_logits_come_back_to_numpy(gen, monkeypatch):
    shapes = []
    original = ort.OrtValue.numpy

    def recording_numpy(self):
        shapes.append(tuple(self.shape()))
        return original(self)

    monkeypatch.setattr(ort.OrtValue, "numpy", recording_numpy)
    gen.generate(["the cat", "dog"], max_new_tokens=6, stop_token_ids=NO_STOP)
    assert len(shapes) == 6 and all(len(s) == 3 and s[-1] == len(T.VOCAB) for s in shapes)


def test_incomplete_exports_name_the_fix(tmp_path, toy):
    with pytest.raises(ExportError, match="make export"):
        Generator(str(tmp_path / "missing"))
    T.write_toy_export(str(tmp_path))
    os.remove(tmp_path / "tokenizer.json")
    with pytest.raises(ExportError, match="tokenizer.json.*make export"):
        Generator(str(tmp_path))


def test_metadata_that_disagrees_with_the_graph(tmp_path):
    T.write_toy_export(str(tmp_path))
    meta = T.toy_metadata()
    meta.layout = type(meta.layout)(meta.layout.keys * 2, meta.layout.values * 2)  # claims 4 layers
    meta.ranks = {kind: r * 2 for kind, r in meta.ranks.items()}                     # and agrees with itself
    meta.save(str(tmp_path))
    with pytest.raises(ExportError, match="past_key_values.2.key"):
        Generator(str(tmp_path))
