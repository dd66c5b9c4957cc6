"""Validation: ONNX Runtime against the PyTorch reference (parity), and what compression costs (quality).

    __main__.py   python -m validate: parity, KV bytes measured, quality, rate-distortion -> report.md
    parity.py     ORT vs the reference decoder, prefill and greedy decode, batch with padding
    tolerances.py every tolerance, once
    export_files.py  the export's files beside model.onnx checked whole (tokenizer, genai config, projectors)
    ort_model.py  a plain onnxruntime forward over the contract (numpy in, numpy out)
    reference.py  the PyTorch sides: the export's reference decoder and the original HF model
    kv_bytes.py   bytes per token measured on the ONNX outputs
    report.py     report.json / report.md
    interop.py    onnxruntime-genai drives the export (make interop)
    optimum_check.py  optimum drives the export (own virtualenv)

Quality figures come from the project's one scoring loop, exporter/eval/perplexity.py.
"""
