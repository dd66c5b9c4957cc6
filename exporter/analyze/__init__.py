"""python -m exporter.analyze (`make analyze`): spectra of activations and weights, robust to sinks and outlier
dimensions, what PCA at "k for 95 % variance" costs in perplexity, and the KV memory it saves (docs/analyze.md).

    options.py      AnalyzeOptions and its checks          threads.py     cores to use on a shared machine
    spectrum.py     spectrum math, TapStatistics            statistics.py  capture and cache of TapStatistics
    activations.py  activation spectra per (layer, tap)     weights.py     weight spectra
    edits.py        the HF model with edited attention      plan.py        which perplexity rows, in order
    scoring.py      the rows scored inside a time budget    memory.py      the KV memory table
    report.py       report.md                               plots.py       the PNG plots
    run.py          run(options): the stages in order       __main__.py    the command line
"""
