"""PyTorch side: load a causal LM, calibrate, fit projectors, fold them into a compact decoder, export ONNX.

Units, lowest layer first (each imports only itself and the layers below; docs/design.md, tests/test_layers.py):

    errors.py                 UserError: one line, naming the fix
    options.py, files.py      every option and its check; files written whole
    codec/                    the codes: Codec/Projectors and their files, scalar quantizer, packing, LatentQuantizer
    model/                    HF model loading, the compact decoder that is exported, folding codes into it
    calib/, eval/             token windows, capture, statistics; the one perplexity/KL/top-1 loop
    projectors/               fitting the codes: PCA, output-aware, trained
    quant/, ranks/            bits per component for a quantized cache; per-layer ranks (K=auto)
    export/                   model.onnx and the export directory
    job/, analyze/            one export end to end (python -m exporter); python -m exporter.analyze
"""
