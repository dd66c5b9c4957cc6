"""The ONNX graph contract: I/O names and shapes, KV sizes, checks, passes and metadata.

Imports only numpy and onnx (the runtime imports the contract too, and must not pull in torch).
"""
