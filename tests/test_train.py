"""Trained projectors (exporter/train.py) on a tiny model: training lowers the loss it is given, cannot lower
plain reconstruction error below PCA's (Eckart-Young), is deterministic, and its files export and validate."""
from __future__ import annotations

import pytest
import torch

from exporter.errors import UserError
from exporter.fit import fit_pca, key_tap, kv_statistics, output_metrics
from exporter.fold import build_decoder
from exporter.load import load
from exporter.projectors import model_fingerprint
from exporter.text import DEFAULT_CALIB
from exporter.train import Objective, CodedDecoder, TrainOptions, train_projectors, training_windows

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
    from tests.conftest import load_ref
    from tests.test_parity import prompts
    from validate.ort_model import OrtModel
    from validate.parity import check_parity
    out = tiny_export("llama", 8, mode, method=method, train=TrainOptions(max_steps=4, window=128, eval_every=2))
    _, _, ref, meta = load_ref(out)
    assert meta.extra["projector_method"] == method
    result = check_parity(ref, OrtModel(out, meta), prompts(meta.sink["token_id"]), meta.pad_token_id)
    assert result.greedy_identical and result.passed, result.to_json()
