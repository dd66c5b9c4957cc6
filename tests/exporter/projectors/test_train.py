"""Trained projectors (exporter/train.py) on a tiny model: training lowers the loss it is given, cannot lower
plain reconstruction error below PCA's (Eckart-Young), is deterministic, and its files export and validate."""
from __future__ import annotations

import pytest
import torch

from exporter.calib.capture import key_tap
from exporter.calib.statistics import kv_statistics
from exporter.calib.text import training_windows
from exporter.errors import UserError
from exporter.model.fold import build_decoder
from exporter.model.load import load
from exporter.model.weights import model_fingerprint
from exporter.options import DEFAULT_CALIB
from exporter.options import TrainOptions
from exporter.projectors.coded import CodedDecoder
from exporter.projectors.metric import output_metrics
from exporter.projectors.pca import fit_pca
from exporter.projectors.train import Objective, train_projectors

WINDOW, TOKENS = 128, 2048


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """(decoder, tokenizer, stats) of tiny llama with statistics on exactly the training windows."""
    loaded = load(tiny_model_dir("llama"))
    dec = build_decoder(loaded.model)
    stats = kv_statistics(dec, loaded.tokenizer, dec.cfg, str(DEFAULT_CALIB), TOKENS, WINDOW, None,
                          model_fingerprint(loaded.model), None)
    return loaded, dec, stats


def _fit(setup, method: str, mode: str = "pre-rope", rank: int = 8):
    loaded, dec, stats = setup
    metric = output_metrics(loaded.model, dec.cfg, stats, mode) if method == "output-aware" else None
    ranks = [rank] * dec.cfg.num_layers
    return fit_pca(stats, dec.cfg, ranks, ranks, mode, None, {"model_fingerprint": "x"}, metric)


def _train(setup, init, loss: str, steps: int = 12, seed: int = 0, heldout=None, lr: float = 0.01):
    loaded, dec, _ = setup
    o = TrainOptions(loss=loss, max_steps=steps, window=WINDOW, eval_every=4, patience=10, seed=seed,
                     heldout_tokens=512, lr=lr)
    train, held = training_windows(loaded.tokenizer, str(DEFAULT_CALIB), TOKENS, o, None)
    return train_projectors(dec, init, key_tap(dec.cfg, init.key_mode), train,
                            held if heldout is None else heldout(train), o, progress=False)


@pytest.mark.parametrize("mode", ["pre-rope", "post-rope"])
def test_training_lowers_the_kl(setup, mode):
    """Measured on the training windows themselves (a random tiny model need not generalise to held-out text;
    on SmolLM2 the held-out curve is in docs/projectors.md)."""
    trained = _train(setup, _fit(setup, "output-aware", mode), "kl", heldout=lambda train: train, lr=0.003)
    curve = [c["heldout"] for c in trained.info["training"]["curve"]]
    assert min(curve[1:]) < curve[0]
    assert trained.info["method"] == "trained" and trained.info["init_method"] == "output-aware"


def test_training_cannot_beat_pca_at_reconstruction(setup):
    """Evaluated on the very windows PCA was fitted on, reconstruction error starts at its optimum: no step
    lowers it (Eckart-Young); the same training with the KL loss does move."""
    trained = _train(setup, _fit(setup, "pca"), "reconstruction", heldout=lambda train: train)
    curve = [c["heldout"] for c in trained.info["training"]["curve"]]
    assert min(curve) >= curve[0] * (1 - 1e-6)
    assert trained.info["training"]["best_step"] == 0


def test_training_is_deterministic(setup):
    init = _fit(setup, "output-aware")
    run = lambda seed: _train(setup, init, "kl", steps=4, seed=seed, heldout=lambda train: train, lr=0.003)
    a, b = run(0), run(0)
    assert a.info["training"]["best_step"] == 4
    for x, y in zip(a.keys + a.values, b.keys + b.values):
        assert torch.equal(x.encode, y.encode) and torch.equal(x.decode, y.decode)
    c = run(1)
    assert not all(torch.equal(x.encode, y.encode) for x, y in zip(a.keys, c.keys))


def test_hidden_loss_trains_and_coded_decoder_matches_the_folded_one(setup):
    loaded, dec, _ = setup
    proj = _train(setup, _fit(setup, "output-aware", "post-rope"), "hidden", steps=4)
    ids = torch.tensor([list(range(5, 60))])
    coded = CodedDecoder(dec, proj, key_tap(dec.cfg, proj.key_mode))
    with torch.no_grad():
        want, _ = coded(ids)
        folded = build_decoder(loaded.model, proj)
        got = folded(ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None], *folded.empty_past(1))[0]
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_cosine_schedule_decays_to_zero_at_the_last_step():
    from exporter.projectors.train import lr_factor
    f = lr_factor(TrainOptions(schedule="cosine", max_steps=10))
    assert f(0) == 1.0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(0.0) and f(12) == f(10)
    assert lr_factor(TrainOptions())(7) == 1.0
    with pytest.raises(UserError, match="schedule"):
        lr_factor(TrainOptions(schedule="linear"))


def test_unknown_loss_and_short_text_are_refused(setup, tmp_path):
    loaded, dec, _ = setup
    with pytest.raises(UserError, match="unknown"):
        Objective(CodedDecoder(dec, _fit(setup, "pca"), "key_pre"), "mse")
    short = tmp_path / "short.txt"
    short.write_text("word " * 1000)
    with pytest.raises(UserError, match="too short to hold out"):
        training_windows(loaded.tokenizer, str(short), 2048, TrainOptions(), None)


@pytest.mark.parametrize("method,mode", [("output-aware", "pre-rope"), ("output-aware", "post-rope"),
                                         ("trained", "pre-rope"), ("trained", "post-rope")])
def test_oblique_exports_match_onnx_runtime(tiny_export, method, mode):
    """Output-aware and trained projectors (encode != decode^T) go through the same export and parity path."""
    from tests.helpers import load_ref
    from tests.helpers import prompts
    from validate.ort_model import OrtModel
    from validate.parity import check_parity
    out = tiny_export("llama", 8, mode, method=method, train=TrainOptions(max_steps=4, window=128, eval_every=2))
    _, _, ref, meta = load_ref(out)
    assert meta.extra["projector_method"] == method
    result = check_parity(ref, OrtModel(out, meta), prompts(meta.sink["token_id"]), meta.pad_token_id)
    assert result.greedy_identical and result.passed, result.to_json()


def test_per_head_value_decodes_start_as_the_shared_code_and_survive_the_file(setup, tmp_path):
    """Values decoded per query head (GQA: tiny llama has 4 query heads on 2 KV heads) start equal to the shared
    decode, train apart, are saved and loaded with the projectors, and the folded decoder uses them."""
    from exporter.codec.store import load_projectors, save_projectors
    loaded, dec, _ = setup
    init = _fit(setup, "output-aware")
    ids = torch.tensor([list(range(5, 60))])
    with torch.no_grad():
        shared, _ = CodedDecoder(dec, init, "key_pre")(ids)
        per_head, _ = CodedDecoder(dec, init, "key_pre", head_decode=True)(ids)
    assert torch.allclose(shared, per_head, atol=1e-5)
    trained = _train(setup, init, "kl", steps=4, heldout=lambda train: train, lr=0.003)
    hd = trained.values[0].head_decode                                  # (H, d, r)
    assert hd.shape == (4, 16, 8) and not torch.allclose(hd[0], hd[1])  # heads 0 and 1 share KV head 0
    save_projectors(trained, str(tmp_path / "p"))
    back = load_projectors(str(tmp_path / "p"))
    assert torch.equal(back.values[0].head_decode, hd)
    with torch.no_grad():
        want, _ = CodedDecoder(dec, back, "key_pre")(ids)
        folded = build_decoder(loaded.model, back)
        got = folded(ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None], *folded.empty_past(1))[0]
        plain = build_decoder(loaded.model, _without_head_decodes(back))
        other = plain(ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None], *plain.empty_past(1))[0]
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, other, atol=1e-4, rtol=1e-4)
    bad = _without_head_decodes(back)
    bad.values[0].head_decode = hd[:, :8]
    with pytest.raises(UserError, match="per-head value decodes"):
        bad.check_compatible(dec.cfg)


def _without_head_decodes(proj):
    import copy
    out = copy.deepcopy(proj)
    for v in out.values:
        v.head_decode = None
    return out
