"""ONNX export of the trained encoder, parity/collapse verification, and atomic versioned publishing."""
