"""Scoring: perplexity, KL and top-1 agreement on token windows, the one loop every figure comes from.

    perplexity.py  nll / perplexity of the PyTorch decoder; measure(original, compressed, windows) -> Quality
"""
