"""benchmarks/runtime_bench/settings.py: the --ours grammar maps onto ExportOptions."""
from __future__ import annotations

import pytest

from benchmarks.runtime_bench.settings import parse_setting, parse_settings
from exporter.options import ExportOptions


@pytest.mark.parametrize("name,want", [
    ("full", {"k": "full", "k_key": None, "k_value": None, "key_mode": "pre-rope", "cache": "concat"}),
    ("k128-post-rope+shared", {"k": "128", "k_key": None, "k_value": None, "key_mode": "post-rope",
                               "cache": "shared-buffer"}),
    ("kk96-kv192-pre-rope", {"k": "96", "k_key": "96", "k_value": "192", "key_mode": "pre-rope",
                             "cache": "concat"}),
])
def test_settings_become_export_options(name, want):
    options = parse_setting(name).export_options()
    assert options == want
    ExportOptions(**options)                       # every key is a real ExportOptions field


def test_bad_settings_name_the_grammar():
    with pytest.raises(ValueError, match="k<N>-<mode>"):
        parse_setting("k128")
    with pytest.raises(ValueError, match="twice"):
        parse_settings("full,full")
