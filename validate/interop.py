"""Our exports driven by another runtime: onnxruntime-genai must produce our runtime's greedy tokens.

    python -m validate.interop [--export DIR ...]     (default: SmolLM2 at K=full and K=128 in both key modes,
                                                        exported first when build/ lacks them; `make interop`)
"""
from __future__ import annotations

import argparse
import os
import sys

from graphs.genai import GENAI_CONFIG
from graphs.metadata import load_metadata

DEFAULT_SETTINGS = (("full", "pre-rope"), ("128", "pre-rope"), ("128", "post-rope"))


def genai_greedy(export_dir: str, prompt_ids: list[int], new_tokens: int) -> list[int]:
    """Greedy tokens from onnxruntime-genai on the export, prompt given as ids (the sink first)."""
    import onnxruntime_genai as og
    if not os.path.isfile(os.path.join(export_dir, GENAI_CONFIG)):
        raise ValueError(f"{export_dir} has no {GENAI_CONFIG}: {load_metadata(export_dir).extra.get('genai')}")
    model = og.Model(export_dir)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt_ids) + new_tokens, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt_ids)
    out = []
    while not gen.is_done() and len(out) < new_tokens:
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


def compare(export_dir: str, prompt: list[int], new_tokens: int = 64) -> tuple[list[int], list[int]]:
    """(genai tokens, our runtime's tokens) for the same prompt ids (without the sink; both add it). Both stop
    at the export's EOS; genai keeps the EOS it stopped on, ours does not, so it is dropped from genai's."""
    from runtime import Generator
    meta = load_metadata(export_dir)
    ours = Generator(export_dir).generate([prompt], max_new_tokens=new_tokens).tokens[0]
    sink = meta.sink.get("token_id")
    theirs = genai_greedy(export_dir, ([] if sink is None else [sink]) + prompt, new_tokens)
    if theirs and theirs[-1] in meta.eos_token_ids:
        theirs = theirs[:-1]
    return theirs, ours


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m validate.interop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", action="append", help="export directory (repeat)")
    p.add_argument("--prompt", default="The history of the city begins in the year")
    p.add_argument("--new-tokens", type=int, default=64)
    a = p.parse_args(argv)
    exports = a.export
    if not exports:
        from exporter.job.run import default_out, run_export
        from exporter.options import ExportOptions
        exports, loaded = [], None
        for k, mode in DEFAULT_SETTINGS:
            o = ExportOptions(k=k, key_mode=mode)
            out = default_out(o, "smollm2-135m", None if k == "full" else int(k), None if k == "full" else int(k))
            if not os.path.isfile(os.path.join(out, GENAI_CONFIG)):
                if loaded is None:
                    from exporter.model.load import load
                    loaded = load(None)
                run_export(o, loaded)
            exports.append(out)
    failed = 0
    for export in exports:
        from tokenizers import Tokenizer
        ids = Tokenizer.from_file(os.path.join(export, "tokenizer.json")).encode(a.prompt,
                                                                                 add_special_tokens=False).ids
        theirs, ours = compare(export, ids, a.new_tokens)
        same = theirs == ours
        failed += not same
        print(f"{export}: onnxruntime-genai {'==' if same else '!='} our runtime over {len(ours)} greedy tokens")
        if not same:
            print(f"  genai: {theirs}\n  ours:  {ours}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
