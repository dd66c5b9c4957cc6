"""The codes themselves, pure math and files, no model: what a compressed cache stores and how it is read back.

    linear.py     Codec (x ~= mean + decode encode (x - mean)) and Projectors (every layer's key/value codecs)
    store.py      projector files: save_projectors / load_projectors (safetensors + JSON, checksummed)
    scalar.py     the scalar quantizer: Max's Gaussian-optimal steps and errors, the token scale table
    packing.py    bit planes of mixed-width codes packed into bytes (Packing, bytes_per_token)
    quantizer.py  LatentQuantizer: the nn.Module the graph runs to encode latents into packed uint8 and back
    cache_quant.py  CacheQuant: the int8 cache onnxruntime's fused attention writes (rotation, static steps)
"""
