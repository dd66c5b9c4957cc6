"""optimum's ORTModelForCausalLM drives one of our exports; prints its greedy tokens as JSON.

Runs in the optimum virtualenv (build/venvs/optimum: optimum-onnx pins transformers<4.58), not in .venv, and
imports nothing of this project but reads export.json itself:

    build/venvs/optimum/bin/python validate/optimum_check.py --export DIR --prompt-ids 5,17,... \
        [--new-tokens 64] [--stop-at-eos] [--io-binding on|off] [--write-config]

Optimum takes the cache shape it allocates for the prefill's empty past (and, with IO binding, the shape of
every present output) from the model config alone: for model_type "llama" it is
[batch, config.num_key_value_heads, 0, config.hidden_size // config.num_attention_heads] for every layer,
keys and values alike. So a LlamaConfig whose num_key_value_heads = kv_heads and
hidden_size = num_attention_heads * head_size describes our [batch, 1, seq, k] cache (and the uncompressed
one), whatever the source family (GPT-2 included): the graph's I/O is the same for every family, and optimum
reads nothing else from the config but model_type, use_cache and generation defaults. Exports whose layers or
keys/values differ in shape cannot be described by one config; `LayoutAwareORTModelForCausalLM` (below)
handles them by allocating the empty past per layer from export.json (IO binding must stay off for those).

The prompt ids are given without the sink token; it is prepended here, as our runtime does (optimum does not
know about it). Output: {"tokens": [...], "prompt": [...], "config": {...}, "io_binding": bool, ...}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def load_export(export_dir: str) -> dict:
    with open(os.path.join(export_dir, "export.json")) as f:
        meta = json.load(f)
    if meta.get("format") != "spectral-kv-export/1":
        raise SystemExit(f"{export_dir}/export.json has format {meta.get('format')!r}, expected 'spectral-kv-export/1'")
    return meta


def uniform_shape(meta: dict) -> tuple[int, int] | None:
    """(kv_heads, head_size) when every layer's keys and values share one shape, else None."""
    layout = meta["layout"]
    shapes = {(s["kv_heads"], s["head_size"]) for s in layout["keys"] + layout["values"]}
    return shapes.pop() if len(shapes) == 1 else None


def optimum_config_dict(meta: dict) -> dict:
    """The config.json values optimum needs to size the cache of this export (a LlamaConfig)."""
    m = meta["model"]
    shape = uniform_shape(meta)
    kv_heads, head_size = shape if shape else (1, 1)    # non-uniform: the subclass sizes the past itself
    heads = max(m["num_heads"], kv_heads)
    eos = meta["eos_token_ids"]
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        # optimum: empty past = [batch, num_key_value_heads, 0, hidden_size // num_attention_heads]
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "hidden_size": heads * head_size,
        "head_dim": head_size, "num_hidden_layers": m["num_layers"], "vocab_size": m["vocab_size"],
        "max_position_embeddings": m["max_positions"], "intermediate_size": 4 * heads * head_size,
        "bos_token_id": meta["sink"].get("token_id"), "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": meta["pad_token_id"], "use_cache": True,
        "torch_dtype": meta["layout"].get("dtype", "float32"),
    }


def make_model_class():
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    class LayoutAwareORTModelForCausalLM(ORTModelForCausalLM):
        """ORTModelForCausalLM that allocates the prefill's empty past from export.json's per-layer layout,
        for exports whose cache tensors do not all have one shape. IO binding must be off (optimum infers
        present shapes from the config, one shape for all)."""
        layout: dict | None = None

        def forward(self, input_ids, attention_mask=None, past_key_values=None, position_ids=None,
                    use_cache=None, **kwargs):
            if past_key_values is None and self.layout is not None and self.key_value_input_names:
                b = input_ids.shape[0]
                empty = []
                for i in range(len(self.layout["keys"])):
                    pair = []
                    for kind in ("keys", "values"):
                        s = self.layout[kind][i]
                        pair.append(torch.zeros((b, s["kv_heads"], 0, s["head_size"]), dtype=self.dtype,
                                                device=self.device))
                    empty.append(tuple(pair))
                past_key_values = tuple(empty)
            return super().forward(input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                                   position_ids=position_ids, use_cache=use_cache, **kwargs)

    return ORTModelForCausalLM, LayoutAwareORTModelForCausalLM


def greedy(export_dir: str, prompt_ids: list[int], new_tokens: int = 64, stop_at_eos: bool = False,
           io_binding: bool = False, write_config: bool = False) -> dict:
    import torch
    from transformers import GenerationConfig, LlamaConfig

    meta = load_export(export_dir)
    cfg_dict = optimum_config_dict(meta)
    if write_config:      # the extra-file route: a config.json beside model.onnx, read by from_pretrained
        with open(os.path.join(export_dir, "config.json"), "w") as f:
            json.dump(cfg_dict, f, indent=1, sort_keys=True)
        config = None
    else:
        config = LlamaConfig(**{k: v for k, v in cfg_dict.items() if k not in ("model_type", "torch_dtype")})
    uniform = uniform_shape(meta) is not None
    if not uniform and io_binding:
        raise SystemExit("IO binding needs one cache shape for all layers; use --io-binding off for this export")
    base_cls, layout_cls = make_model_class()
    cls = base_cls if uniform else layout_cls
    eos = meta["eos_token_ids"]
    gen_cfg = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=new_tokens,
                               eos_token_id=(eos if stop_at_eos else None), pad_token_id=meta["pad_token_id"],
                               bos_token_id=meta["sink"].get("token_id"), use_cache=True)
    if write_config:
        # from_pretrained insists on a config.json in the directory (it infers the library from it) and
        # ignores an in-memory config for that check
        model = cls.from_pretrained(export_dir, file_name="model.onnx", use_cache=True,
                                    use_io_binding=io_binding, generation_config=gen_cfg,
                                    provider="CPUExecutionProvider", local_files_only=True)
    else:
        # no file written: the public constructor, with what _from_pretrained would have set on the config
        import onnxruntime as ort
        config.use_cache, config.is_decoder, config.is_encoder_decoder = True, True, False
        session = ort.InferenceSession(os.path.join(export_dir, "model.onnx"), providers=["CPUExecutionProvider"])
        model = cls(config=config, session=session, use_io_binding=io_binding, generation_config=gen_cfg,
                    model_save_dir=export_dir)
    if not uniform:
        model.layout = meta["layout"]
    sink = meta["sink"].get("token_id")
    ids = ([] if sink is None else [sink]) + list(prompt_ids)
    input_ids = torch.tensor([ids], dtype=torch.long)
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                         generation_config=gen_cfg)
    tokens = out[0, len(ids):].tolist()
    if stop_at_eos and tokens and tokens[-1] in eos:
        tokens = tokens[:-1]           # our runtime does not return the EOS it stopped on
    import optimum.version
    import transformers
    return {"export": export_dir, "prompt": ids, "tokens": tokens, "io_binding": bool(model.use_io_binding),
            "class": cls.__name__, "config": cfg_dict, "stop_at_eos": stop_at_eos,
            "versions": {"optimum": optimum.version.__version__, "transformers": transformers.__version__,
                         "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="validate/optimum_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", required=True)
    p.add_argument("--prompt-ids", required=True, help="comma-separated token ids, without the sink token")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--stop-at-eos", action="store_true", help="stop at the export's EOS (dropped from the output)")
    p.add_argument("--io-binding", choices=("on", "off"), default="off")
    p.add_argument("--write-config", action="store_true",
                   help="write config.json into the export dir and let optimum read it, instead of passing it")
    a = p.parse_args(argv)
    prompt = [int(t) for t in a.prompt_ids.split(",") if t.strip()]
    result = greedy(a.export, prompt, a.new_tokens, a.stop_at_eos, a.io_binding == "on", a.write_config)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
