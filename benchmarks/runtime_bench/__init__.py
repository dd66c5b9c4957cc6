"""`make bench-runtime`: our runtime against its peers (HF transformers, onnxruntime-genai, optimum), same model,
same prompt ids, same run.

    python -m benchmarks.runtime_bench [--prompts 128,1024,4096] [--runs 3] [--new-tokens 64] \
        [--ours full,full+shared,kk96-kv192-pre-rope,...] [--only hf,genai,optimum,ours] [--rebuild-ours]

Modules: `common` (paths, prompt ids, the token clock every child uses; stdlib only, so it imports in both
virtualenvs), `settings` (the --ours grammar), `prepare` (builds the cached models under build/bench/),
`child_hf` / `child_genai` / `child_optimum` / `child_ours` (one measurement each, in a fresh process),
`measure` (runs the children, aggregates), `table` (the markdown table), `__main__` (the CLI).
Definitions and how to run it: docs/bench_runtime.md. This file imports nothing: the optimum child runs in
another virtualenv and imports `common` through this package.
"""
