"""python -m runtime: generate from an export on the command line, streaming the text."""
from __future__ import annotations

import argparse
import sys

from graphs.metadata import ExportError

from .generator import DEFAULT_EXPORT, DEFAULT_PREFILL_CHUNK, Generator
from .session import ProviderError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runtime", description=__doc__)
    p.add_argument("--export", default=DEFAULT_EXPORT,
                   help=f"export directory with model.onnx, export.json, tokenizer.json (default {DEFAULT_EXPORT})")
    p.add_argument("--prompt", action="append",
                   help="prompt text; repeat for a batch (left-padded). With --load-cache: what each saved sequence "
                        "goes on with (optional)")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the export's chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--provider", choices=("cpu", "cuda"), default=None,
                   help="execution provider (default: cuda when usable, else cpu)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = its default)")
    p.add_argument("--prefill-chunk", type=int, default=DEFAULT_PREFILL_CHUNK,
                   help=f"feed the prompt in chunks of this many tokens, bounding prefill memory "
                        f"(0 = all at once; default {DEFAULT_PREFILL_CHUNK})")
    p.add_argument("--save-cache", metavar="FILE", help="after generating, save the cache and what comes next to FILE "
                   "(zstd-compressed safetensors), to go on later with --load-cache")
    p.add_argument("--load-cache", metavar="FILE", help="go on from a generation saved with --save-cache by this export")
    args = p.parse_args(argv)
    if not args.prompt and not args.load_cache:
        p.error("--prompt is required (or --load-cache FILE to go on from a saved generation)")
    if args.chat and args.load_cache:
        p.error("--chat wraps a new conversation's first message; a loaded one goes on with plain text")
    return args


def _stream(index: int, token_id: int, piece: str) -> None:
    """on_token for a single prompt: print each piece as it comes."""
    sys.stdout.write(piece)
    sys.stdout.flush()


def run(args: argparse.Namespace) -> None:
    """Generate for args.prompt; one prompt streams, several print in order when done; then the timings."""
    generator = Generator(args.export, provider=args.provider, intra_op_threads=args.threads,
                          prefill_chunk=args.prefill_chunk)
    state = None
    if args.load_cache:
        state = generator.load_state(args.load_cache, args.prompt, args.max_new_tokens)
    single = len(state.history if state else args.prompt) == 1
    result = generator.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, seed=args.seed, chat=args.chat,
                                on_token=_stream if single else None, resume=state,
                                keep_state=bool(args.save_cache))
    if single:
        print()
    else:
        for i, text in enumerate(result.texts):
            print(f"[{i}]{text}")
    print(f"{result.timings.summary()} on {generator.device.type}")
    if args.save_cache:
        size, cache_bytes = generator.save_state(args.save_cache, result.state)
        print(f"saved {result.state.attention_mask.shape[1]} tokens per sequence to {args.save_cache}: {size:,} bytes "
              f"(the cache holds {cache_bytes:,})")


def main(argv: list[str] | None = None) -> int:
    """Entry point; a bad export, provider or argument ends with one line on stderr and exit status 2."""
    args = parse_args(argv)
    try:
        run(args)
    except (ExportError, ProviderError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
