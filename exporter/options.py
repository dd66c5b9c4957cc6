"""What a user can ask of an export: every option, its default and its check, in one leaf module.

The CLI (`python -m exporter`), the Makefile and the benchmarks build these dataclasses; every stage reads
them. Nothing here imports torch, so `python -m exporter --help` stays instant.

    ExportOptions            the whole job (model, K, key mode, calibration, output, dtype, cache protocol)
      .train  TrainOptions   METHOD=trained: loss, steps, step size, windows (projectors/train.py)
      .auto   AutoOptions    K=auto: a byte budget or a perplexity budget (ranks/auto.py)
      .quant  QuantOptions   QUANT=...: a quantized cache of QUANT_RATIO x fewer bytes than float16 (quant/design.py)

Entry point: `ExportOptions` (and its .train, .auto, .quant), `parse_rank`, `parse_percent`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import UserError

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SPECTRAL_KV_DATA", REPO.parent / "shared" / "data"))
DEFAULT_CALIB = DATA_DIR / "wikitext-103-valid.tokens.txt"
DEFAULT_EVAL = DATA_DIR / "wikitext-2-raw-test.txt"

KEY_MODES = ("pre-rope", "post-rope")
DEFAULT_KEY_MODE = "pre-rope"
METHODS = ("pca", "output-aware", "trained", "raw")
LOSSES = ("kl", "hidden", "reconstruction")
ALLOCATIONS = ("spectral", "uniform")
SCALES = ("static", "token")            # quantizer steps: fixed per component, or a scale byte per token and group
KV_DTYPES = ("int8",)                   # a cache onnxruntime's fused attention quantizes itself (codec/cache_quant.py)
KV_ROTATIONS = ("hadamard", "none")
# which kernel reads an int8 cache: onnxruntime's GroupQueryAttention, or ours (graphs/kernels: spectral_kv.
# CodesAttention, each cached row read once per KV head, CPU only)
KV_KERNELS = ("onnxruntime", "codes")
WINDOW_CACHES = ("bounded", "full")     # a sliding-window layer's cache: its window only, or every token


@dataclass
class TrainOptions:
    loss: str = "kl"
    max_steps: int = 64
    lr: float = 3e-4             # relative: each entry moves by about lr x its matrix's starting RMS per step
    schedule: str = "constant"   # or 'cosine': the step size decays to 0 at max_steps
    window: int = 512            # tokens per training window (plus the sink)
    heldout_tokens: int = 2048   # after the calibration tokens in the same file
    eval_every: int = 8
    patience: int = 3            # held-out evaluations without improvement before stopping
    seed: int = 0
    head_decode: bool = True     # values: one decode per query head (GQA models; free in the export)
    tokens: int | None = None    # training tokens from the start of the calibration file; None: the calibration's


@dataclass
class AutoOptions:
    budget_bytes: float | None = None
    max_ppl_increase: float | None = None    # percent
    granularity: int = 8
    tie: bool = False                        # equal key and value ranks per layer (fused kernel)
    sensitivity: str = "measured"            # 'measured' | 'metric' (ranks/allocate.py)
    heldout_tokens: int = 16384             # spread over the file in windows of 2048
    margin: float = 1.0                      # standard errors added to the held-out increase before comparing
    probe_tokens: int = 1024


@dataclass
class QuantOptions:
    allocation: str | None = None    # None: a float cache; 'spectral' | 'uniform'
    ratio: float = 4.0               # the cache is this many times smaller than a float16 one (scales counted)
    key_scales: str = "static"       # 'static' | 'token' (codec/quantizer.py)
    value_scales: str = "static"
    group: int = 64                  # components per token scale
    weights: str = "output"          # 'output': weights in the output-aware metric; 'variance': var_j alone
    fit_tokens: int = 4096           # calibration tokens the static scales are fitted to (0: Gaussian steps)
    sensitivity: str = "measured"    # 'measured': weights times each tensor's probed KL per unit (quant/probe.py);
                                     # 'none': the weights as they are
    probe_tokens: int = 1024         # calibration text after the calibration tokens, for the probes
    probe_rounds: int = 1            # probe again at the allocation the last probes gave, this many times in all
    float_window: int | None = None  # W >= 2: the last W-1 tokens' exact latents in float16 beside the codes;
                                     # 0: none; None: the default, settled by the job (quant/window.py)
    window_context: int = 2048       # the context a float window's bytes are spread over in the ratio

    def scales(self, kind: str) -> str:
        return self.key_scales if kind == "key" else self.value_scales

    def check(self) -> None:
        if self.allocation not in ALLOCATIONS:
            raise UserError(f"QUANT={self.allocation!r} is unknown: use {' or '.join(ALLOCATIONS)}")
        if not self.ratio > 1:
            raise UserError(f"QUANT_RATIO={self.ratio:g} must be > 1 (times fewer bytes than a float16 cache)")
        for s in (self.key_scales, self.value_scales):
            if s not in SCALES:
                raise UserError(f"quantizer scales {s!r} are unknown: use {' or '.join(SCALES)}")
        if self.group < 1:
            raise UserError(f"QUANT_GROUP={self.group} must be >= 1")
        if self.sensitivity not in ("measured", "none"):
            raise UserError(f"quantizer sensitivity {self.sensitivity!r} is unknown: use measured or none")
        if self.weights not in ("output", "variance"):
            raise UserError(f"quantizer weights {self.weights!r} are unknown: use output or variance")
        if self.float_window is not None and (self.float_window < 0 or self.float_window == 1):
            raise UserError(f"QUANT_WINDOW={self.float_window} must be 0 (none) or >= 2 (the newest tokens read "
                            "in float, the query itself included)")
        if self.window_context < max(self.float_window or 0, 1):
            raise UserError(f"QUANT_WINDOW_CONTEXT={self.window_context} must be at least QUANT_WINDOW="
                            f"{self.float_window}: it is the context the window's bytes are counted over")


@dataclass
class ExportOptions:
    model: str | None = None
    k: str = "full"
    k_key: str | None = None
    k_value: str | None = None
    key_mode: str = DEFAULT_KEY_MODE
    calib: str = str(DEFAULT_CALIB)
    calib_tokens: int = 16384
    window: int = 1024
    seed: int = 0
    out: str | None = None
    build_dir: str = "build"
    projectors: str | None = None
    sink: str = "auto"
    trust_remote_code: bool = False
    dtype: str = "float32"          # 'float16': weights, activations and cache in float16 (GPU users)
    cache: str = "concat"           # 'shared-buffer': fused GroupQueryAttention, in-place cache (graphs/contract.py)
    kv_dtype: str | None = None     # 'int8': the fused op stores int8 codes of rotated keys and values
    kv_rotation: str = "hadamard"   # with kv_dtype: the per-head rotation before the op quantizes
    kv_kernel: str = "onnxruntime"  # with kv_dtype: the kernel that reads the codes (KV_KERNELS)
    window_cache: str = "bounded"   # sliding-window layers: keep window - 1 tokens, or all (masked to the window)
    stream: bool | None = None      # read and export the model one layer at a time (job/streamed.py); None: when
                                    # its float32 weights pass STREAM_ABOVE_BYTES
    method: str | None = None       # 'pca' | 'output-aware' (projectors/metric.py) | 'trained' (projectors/train.py,
                                    # from output-aware) | 'raw'; None: pca, or output-aware for K=auto
    train: TrainOptions = field(default_factory=TrainOptions)
    auto: AutoOptions = field(default_factory=AutoOptions)    # K=auto: the budget (ranks/auto.py)
    quant: QuantOptions = field(default_factory=QuantOptions) # a quantized cache (quant/design.py); off by default
    default_export: bool = False        # set by with_default_export: the user shaped nothing

    @property
    def is_auto(self) -> bool:
        return str(self.k).lower() == "auto"


# what `make export` builds: K=full, an int8 cache read by our kernel (graphs/kernels)
DEFAULT_EXPORT = {"k": "full", "cache": "shared-buffer", "kv_dtype": "int8", "kv_kernel": "codes"}
# the options that shape the cache: when a user gives none of them, the default export is built
SHAPING = ("k", "k_key", "k_value", "cache", "kv_dtype", "method", "projectors")


def with_default_export(o: ExportOptions, given: set[str]) -> ExportOptions:
    """The default export (K=full, an int8 cache our kernel reads: the best measured trade of bytes, speed and
    quality, docs/runtime_speed.md) unless one of SHAPING was given, or a float16 or quantized (QUANT) export was
    asked for. A KV_KERNEL given alone picks the kernel of the default export."""
    if given & set(SHAPING) or o.dtype != "float32" or o.quant.allocation is not None:
        return o
    kernel = {"kv_kernel": o.kv_kernel} if "kv_kernel" in given else {}
    return replace(o, **{**DEFAULT_EXPORT, **kernel}, default_export=True)


def default_for_windows(o: ExportOptions) -> ExportOptions:
    """The default export of a model with sliding-window layers: K=full in the concat contract, whose windowed
    layers keep only their window (the fused op's shared buffer cannot bound them), unless WINDOW_CACHE=full
    was asked for (then the int8 shared buffer, the window masked by the op)."""
    return o if o.window_cache == "full" else replace(o, cache="concat", kv_dtype=None, kv_kernel="onnxruntime")


def parse_percent(value: str) -> float:
    try:
        v = float(str(value).rstrip("%"))
    except ValueError:
        raise UserError(f"MAX_PPL_INCREASE={value!r} is not a percentage: write e.g. 2%") from None
    if v <= 0:
        raise UserError(f"MAX_PPL_INCREASE={value!r} must be above 0 %")
    return v


def parse_rank(value, kv_dim: int, what: str) -> int | None:
    """'full' -> None (uncompressed); an int in 1..kv_dim -> that rank. Anything else is a one-line error."""
    if value is None or str(value).lower() == "full":
        return None
    try:
        r = int(value)
    except ValueError:
        raise UserError(f"{what}={value!r} is not a number: use an integer 1..{kv_dim} or 'full'") from None
    if not 1 <= r <= kv_dim:
        raise UserError(f"{what}={r} is out of range: this model's keys and values have {kv_dim} dims per layer "
                        f"(KV heads x head_dim); use 1..{kv_dim} or 'full'")
    return r


def given_rank(o: ExportOptions, kind: str, kv_dim: int) -> int | None:
    """The rank K_KEY or K_VALUE (else K) asks for a kind ('key' | 'value'): None for full, as parse_rank."""
    given = o.k_key if kind == "key" else o.k_value
    return parse_rank(given if given is not None else o.k, kv_dim, f"K_{kind.upper()}" if given is not None else "K")


def per_layer(rank, n: int) -> list:
    """One rank for every layer (an int or None), or a per-layer list as it is."""
    return list(rank) if isinstance(rank, (list, tuple)) else [rank] * n
