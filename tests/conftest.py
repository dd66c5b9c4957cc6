"""Shared fixtures: tiny random models of every architecture and their exports, made once per test session."""
from __future__ import annotations

import pytest

from validate import tiny_models
from tests.helpers import CALIB_TOKENS


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """tiny_model_dir(arch) -> a local HF directory with a random model of that architecture."""
    root = tmp_path_factory.mktemp("tiny-models")
    made = {}

    def get(arch: str) -> str:
        if arch not in made:
            made[arch] = tiny_models.make(arch, str(root / arch))
        return made[arch]
    return get


@pytest.fixture(scope="session")
def tiny_export(tiny_model_dir, tmp_path_factory):
    """tiny_export(arch, k, key_mode) -> export directory (cached per argument tuple)."""
    from exporter.job.run import run_export
    from exporter.options import ExportOptions
    root = tmp_path_factory.mktemp("tiny-exports")
    made = {}

    def get(arch: str, k="full", key_mode: str = "pre-rope", **kw) -> str:
        key = (arch, str(k), key_mode, tuple(sorted((n, repr(v)) for n, v in kw.items())))
        if key not in made:
            out = str(root / f"{arch}-{k}-{key_mode}-{len(made)}")
            made[key] = run_export(ExportOptions(model=tiny_model_dir(arch), k=str(k), key_mode=key_mode,
                                                 calib_tokens=CALIB_TOKENS, window=256, out=out,
                                                 build_dir=str(root), **kw))
        return made[key]
    return get


SLOW_FIXTURES = {"tiny_model_dir", "tiny_export"}     # a tiny HF model on disk, or an export of one


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: builds tiny HF models or exports them (make test-fast skips it)")


def pytest_collection_modifyitems(config, items):
    """Tests that build tiny models or exports are the slow end-to-end ones: marked, so `make test-fast`
    (pytest -m 'not slow') runs the rest in well under a minute."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
