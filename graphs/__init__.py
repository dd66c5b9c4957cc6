"""The ONNX graph contract: I/O names and shapes, KV sizes, checks, passes and metadata; and the one process
helper both sides share (memory.py: giving the heap's free pages back).

Imports only numpy and onnx (the runtime imports the contract too, and must not pull in torch).
"""
