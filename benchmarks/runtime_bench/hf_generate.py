"""Greedy generation through transformers' `generate` with a token clock: shared by the HF and optimum children
(both are transformers models; optimum's runs in its own virtualenv with transformers 4.57)."""
from __future__ import annotations

from .common import TokenClock


def timed_generate(model, ids: list[int], new_tokens: int, clock: TokenClock) -> None:
    """model.generate on ids (greedy, exactly new_tokens: the caller has unset the EOS), stamping each new
    token on `clock` as generate's streamer receives it; checks the stamps against generate's output."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        """generate calls put() once with the prompt, then once per new token (a (1,) tensor)."""
        def __init__(self):
            self.prompt_seen = False

        def put(self, value):
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            clock.token(int(value.reshape(-1)[0]))

        def end(self):
            pass

    input_ids = torch.tensor([ids], dtype=torch.long)                       # (1, N)
    with torch.inference_mode():
        clock.start()
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                             max_new_tokens=new_tokens, streamer=Stamps())
    assert out[0, len(ids):].tolist() == clock.tokens, "streamer and generate output disagree"
