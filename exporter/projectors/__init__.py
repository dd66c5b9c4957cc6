"""Fitting the codes: from calibration statistics to per-layer key and value projectors.

    basis.py    principal_basis: top eigenvectors, the sink kept exact, signs fixed
    metric.py   the output-aware metrics (what attention scores and o_proj feel) and whitening by them
    pca.py      fit_pca (plain or output-aware), fit_raw (no transform, for plain KV quantization)
    coded.py    CodedDecoder: the decoder with codecs hooked in, what training and searches run
    train.py    train_projectors: fine-tune the codes on calibration text with the model frozen
"""
