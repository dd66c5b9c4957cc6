"""The model: the HF causal LM as loaded, and the compact decoder that is calibrated, trained and exported.

    config.py     DecoderConfig: the few numbers the decoder needs, from the HF config
    load.py       load(model) -> Loaded (HF model + tokenizer) from a hub id, directory or GGUF; refusals
    weights.py    attention_weights (q/k/v/o of any family, float64) and model_fingerprint
    rope.py       rotary embedding (HF's half-split convention)
    layers.py     RMSNorm, SwiGLU/GELU MLPs, embeddings and LM head
    fused.py      onnxruntime's GroupQueryAttention as a traceable op (shared-buffer exports)
    attention.py  Attention over a full, latent or quantized-latent cache: the reference that is exported
    decoder.py    Decoder: embeddings, blocks, norm, head; its forward is the ONNX contract
    fold.py       build_decoder(hf, projectors): HF weights with the projectors folded in (float64, cast once)
"""
