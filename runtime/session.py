"""Opening an onnxruntime InferenceSession on the best device there is, and naming that device.

The device decides where the KV cache lives: 'cpu' OrtValues on the CPU provider, 'cuda' device
OrtValues on the CUDA provider. The rest of the runtime asks `Device` and never the provider list.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from graphs import kernels
from graphs.metadata import ExportError

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


# what onnxruntime raises for a model file (or its external data) it cannot parse or read
MODEL_LOAD_ERRORS = (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.NoSuchFile, ort_errors.Fail)


def first_line(error: Exception) -> str:
    """An onnxruntime error's message, first line only, without its '[ONNXRuntimeError] : 7 : NAME : Load model
    from <path> failed:' prefix."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.sub(r"^Load model from .* failed:", "", text.rsplit(" : ", 1)[-1]).strip()


class ProviderError(RuntimeError):
    """The requested execution provider cannot run here; the message names the fix."""


@dataclass(frozen=True)
class Device:
    """Where a session's inputs and outputs live, in the terms OrtValue and IOBinding take."""
    type: str = "cpu"   # 'cpu' | 'cuda'
    id: int = 0


def cuda_available() -> bool:
    """True when this onnxruntime build has the CUDA provider (onnxruntime-gpu); a GPU is checked at open."""
    return CUDA_PROVIDER in ort.get_available_providers()


def session_options(optimization: str = "all", intra_op_threads: int = 0) -> ort.SessionOptions:
    """Graph optimisation level by name ('disable', 'basic', 'extended', 'all'); 0 threads = onnxruntime's default."""
    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"unknown graph optimisation level {optimization!r}; "
                         f"choose one of {', '.join(OPTIMIZATION_LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    options.intra_op_num_threads = intra_op_threads
    options.log_severity_level = 3  # errors only: the CPU fallback warning is handled below
    kernels.register(options)       # our ops (graphs/kernels), when built: exports that use them need it
    return options


def _provider_list(provider: str | None, device_id: int) -> list:
    """The providers to ask for: CUDA first when requested or (provider None) when the build has it."""
    if provider not in (None, "cpu", "cuda"):
        raise ProviderError(f"unknown provider {provider!r}: use 'cpu' or 'cuda'")
    if provider == "cuda" and not cuda_available():
        raise ProviderError("provider 'cuda' needs onnxruntime-gpu: `pip install onnxruntime-gpu`, "
                            "or pass provider 'cpu'")
    if provider == "cpu" or (provider is None and not cuda_available()):
        return [CPU_PROVIDER]
    return [(CUDA_PROVIDER, {"device_id": device_id}), CPU_PROVIDER]


def _preload_cuda_libraries() -> None:
    """Let onnxruntime-gpu find CUDA/cuDNN from the nvidia-* pip packages, when it can; harmless otherwise."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # libraries installed system-wide, or none: the session open decides
            pass


def open_session(model_path: str, provider: str | None = None, optimization: str = "all",
                 intra_op_threads: int = 0, device_id: int = 0) -> tuple[ort.InferenceSession, Device]:
    """An InferenceSession on `provider` ('cpu', 'cuda', or None for CUDA when a GPU is usable, else CPU).

    onnxruntime-gpu lists the CUDA provider even without a GPU and then falls back to CPU when the
    session opens; the providers the session really got decide the Device.
    """
    providers = _provider_list(provider, device_id)
    if providers[0] != CPU_PROVIDER:
        _preload_cuda_libraries()
    try:
        session = ort.InferenceSession(model_path, sess_options=session_options(optimization, intra_op_threads),
                                       providers=providers)
    except MODEL_LOAD_ERRORS as e:
        if kernels.DOMAIN in str(e):
            raise ExportError(f"{model_path} uses our kernels and onnxruntime cannot find them: "
                              f"{kernels.BUILD_HINT}") from None
        raise ExportError(f"onnxruntime cannot load {model_path} ({first_line(e)}): the file is truncated or "
                          "damaged, re-export it with `make export`") from None
    on_cuda = CUDA_PROVIDER in session.get_providers()
    if provider == "cuda" and not on_cuda:
        raise ProviderError("provider 'cuda' was requested but no GPU could be used (check the driver, "
                            "CUDA and cuDNN versions onnxruntime-gpu needs), or pass provider 'cpu'")
    return session, Device("cuda", device_id) if on_cuda else Device("cpu", 0)
