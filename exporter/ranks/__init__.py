"""Per-layer ranks: where a budget of cache dims buys the most quality (K=auto).

    allocate.py  the error curve of each tensor and the greedy allocation of dims under a budget
    auto.py      Search / choose_ranks: probes, bisection on held-out perplexity, the uniform PCA reference
"""
