"""Calibration: text into token windows, tokenizer facts, activations captured into running statistics.

    text.py        token windows of a text file (the one windowing convention), and which part of the
                   calibration file each consumer reads (calibration, probes, held-out, training)
    tokens.py      the sink token, the chat wrapper and stop tokens that go into export.json
    capture.py     capture(decoder, windows, accumulators): taps in the decoder feed Covariance / Rows
    store.py       one on-disk format for every accumulator (build/calib/*.safetensors)
    statistics.py  kv_statistics -> Statistics (what projectors are fitted from), calibration_samples
"""
