"""What the tokenizer says about a sequence: the sink token at position 0, the chat wrapper, the stop tokens.

These go into export.json so the runtime needs neither transformers nor jinja: it prepends the sink, wraps a
prompt in the chat prefix and suffix, and stops at the stop tokens.

Entry points: `sink_token_id`, `chat_wrapper`, `stop_tokens`.
"""
from __future__ import annotations

from ..errors import UserError


def sink_token_id(tokenizer, choice: str) -> int | None:
    """The constant token at position 0 of every sequence. 'auto': the tokenizer's BOS, else its EOS
    (GPT-2's <|endoftext|>); 'none': no sink prefix; else a token string or id."""
    if choice == "none":
        return None
    if choice == "auto":
        tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if tid is None:
            raise UserError("the tokenizer has no BOS or EOS token: pass --sink TOKEN or --sink none")
        return int(tid)
    if choice.isdigit():
        return int(choice)
    tid = tokenizer.convert_tokens_to_ids(choice)
    if tid is None or tid == tokenizer.unk_token_id and choice != tokenizer.unk_token:
        raise UserError(f"sink token {choice!r} is not in the vocabulary: pass a token of this tokenizer")
    return int(tid)


def chat_wrapper(tokenizer) -> dict | None:
    """The chat template rendered around one user message, as a prefix and a suffix string, so the runtime
    can apply it without jinja or transformers."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    mark = "\x00MESSAGE\x00"
    text = tokenizer.apply_chat_template([{"role": "user", "content": mark}], tokenize=False,
                                         add_generation_prompt=True)
    prefix, _, suffix = text.partition(mark)
    return {"prefix": prefix, "suffix": suffix}


def stop_tokens(tokenizer, hf_config) -> list[int]:
    ids = set()
    for src in (getattr(hf_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(i) for i in src)
    return sorted(ids)
