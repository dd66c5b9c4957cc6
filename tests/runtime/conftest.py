"""runtime/: generation through IO binding on a toy export (tests/toy_graph.py) against a numpy reference."""
from __future__ import annotations


import pytest

from runtime import Generator
from tests import toy_graph as T


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(export dir, weights) of the float32 toy export."""
    directory = str(tmp_path_factory.mktemp("toy"))
    return directory, T.write_toy_export(directory)


@pytest.fixture(scope="module")
def gen(toy):
    return Generator(toy[0], provider="cpu")
