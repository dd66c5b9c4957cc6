"""One export, end to end: the job object, its stages, and run_export.

    checks.py  settings refused before any work (one-line errors naming the fix)
    job.py     ExportJob: model, config, sink, fingerprint, uncompressed decoder; statistics/metrics cached
    stages.py  choose_auto_ranks, fit_projectors, quantize: job in, projectors out
    run.py     run_export(options): the stages in order, then model.onnx and export.json
"""
