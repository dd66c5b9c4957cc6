"""Validation: ONNX Runtime against the PyTorch reference (parity), and what compression costs (quality)."""
