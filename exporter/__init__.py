"""PyTorch side: load a causal LM, calibrate, fit projectors, fold them into a compact decoder, export ONNX."""
