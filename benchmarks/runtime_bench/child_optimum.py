"""One measurement of optimum's ORTModelForCausalLM (optimum-onnx export, onnxruntime CPU, IO binding on).

    build/venvs/optimum/bin/python -m benchmarks.runtime_bench.child_optimum OPTIMUM_DIR N_PROMPT NEW_TOKENS

Runs in the optimum virtualenv (transformers 4.57.6; optimum-onnx pins transformers<4.58). optimum's own
default on CPU is IO binding off; we turn it on (`use_io_binding=True`; `--io-binding off` measures the
default). `model.generate` greedy, as in child_hf, with generation_config.eos_token_id = None so EOS does not
stop it. The optimum graph returns logits for every prompt position (at 4096 tokens: 4096 x 49152 fp32).

ttft_s: from just before model.generate() (empty past, prefill, first argmax) to the streamer receiving the
first new token. decode_tok_s: (NEW_TOKENS - 1) / (last - first token stamp). peak_rss_gib: ru_maxrss of this
process (session creation included).
"""
from __future__ import annotations

import sys

from .hf_generate import timed_generate
from .common import TokenClock, child_args, emit, load_prompt


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    io_binding = True
    if "--io-binding" in argv:
        i = argv.index("--io-binding")
        io_binding = argv[i + 1] == "on"
        del argv[i:i + 2]
    a = child_args(argv, __doc__)
    import onnxruntime
    import optimum.version
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    ids, _ = load_prompt(a.prompt_tokens, a.ids)
    model = ORTModelForCausalLM.from_pretrained(a.model, provider="CPUExecutionProvider",
                                                use_io_binding=io_binding)
    model.generation_config.eos_token_id = None
    clock = TokenClock()

    timed_generate(model, ids, a.new_tokens, clock)
    past = [i for i in model.session.get_inputs() if i.name.startswith("past_key_values.")]   # (1, kv, past, hd)
    elem = {"tensor(float)": 4, "tensor(float16)": 2}[past[0].type]
    kv_bytes = sum(int(i.shape[1]) * int(i.shape[3]) * elem for i in past)
    try:
        from importlib.metadata import version
        onnx_pkg = f"optimum-onnx {version('optimum-onnx')}"
    except Exception:
        onnx_pkg = f"optimum {optimum.version.__version__}"
    emit(clock.result(a.new_tokens, runtime=f"{onnx_pkg} ORTModelForCausalLM (onnxruntime "
                                            f"{onnxruntime.__version__}, IO binding {'on' if io_binding else 'off'})",
                      kv_bytes_per_token=kv_bytes, io_binding=model.use_io_binding))


if __name__ == "__main__":
    main()
