"""The --ours grammar: which of our exports to measure, each a short name parsed into ExportOptions fields.

    full                       the uncompressed cache (K=full)
    k<N>-<mode>                keys and values at rank N, mode pre-rope | post-rope   e.g. k128-pre-rope
    kk<N>-kv<M>-<mode>         keys at rank N, values at rank M                       e.g. kk96-kv192-pre-rope

N and M may also be 'full'. A '+shared' suffix exports the shared-buffer cache variant (fused
GroupQueryAttention, cache written in place; graphs/contract.py), e.g. full+shared, k128-post-rope+shared.
Standard library only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_OURS = "full,full+shared,kk96-kv192-pre-rope,k128-post-rope+shared"
SHARED = "+shared"
MODES = ("pre-rope", "post-rope")
_RANK = r"(\d+|full)"
_UNIFORM = re.compile(rf"k{_RANK}-(pre-rope|post-rope)")
_SPLIT = re.compile(rf"kk{_RANK}-kv{_RANK}-(pre-rope|post-rope)")


@dataclass(frozen=True)
class Setting:
    name: str                 # as typed, also the directory suffix: build/bench/ours-<name>
    k: str                    # ExportOptions.k
    k_key: str | None         # ExportOptions.k_key (None: k)
    k_value: str | None       # ExportOptions.k_value (None: k)
    key_mode: str             # ExportOptions.key_mode
    cache: str = "concat"     # ExportOptions.cache: concat | shared-buffer

    def export_options(self) -> dict:
        """Keyword arguments for exporter.options.ExportOptions."""
        return {"k": self.k, "k_key": self.k_key, "k_value": self.k_value, "key_mode": self.key_mode,
                "cache": self.cache}

    @property
    def label(self) -> str:
        """The table's row name."""
        tail = ", shared buffer" if self.cache == "shared-buffer" else ""
        if self.k_key is None:
            return ("ours K=full" if self.k == "full" else f"ours K={self.k} {self.key_mode}") + tail
        return f"ours K_key={self.k_key} K_value={self.k_value} {self.key_mode}{tail}"


def parse_setting(name: str) -> Setting:
    name = name.strip()
    base, cache = (name[:-len(SHARED)], "shared-buffer") if name.endswith(SHARED) else (name, "concat")
    if base == "full":
        return Setting(name, "full", None, None, "pre-rope", cache)
    if m := _UNIFORM.fullmatch(base):
        return Setting(name, m.group(1), None, None, m.group(2), cache)
    if m := _SPLIT.fullmatch(base):
        return Setting(name, m.group(1), m.group(1), m.group(2), m.group(3), cache)  # k unused: k_key, k_value win
    raise ValueError(f"--ours setting {name!r} is not understood: use full, k<N>-<mode> or kk<N>-kv<M>-<mode> "
                     f"with mode {' or '.join(MODES)}, optionally +shared (e.g. k128-pre-rope, "
                     "kk96-kv192-pre-rope, full+shared)")


def parse_settings(text: str) -> list[Setting]:
    settings = [parse_setting(s) for s in text.split(",") if s.strip()]
    if len({s.name for s in settings}) != len(settings):
        raise ValueError(f"--ours {text!r} names a setting twice")
    return settings
