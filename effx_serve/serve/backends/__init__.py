"""What runs a batch of one member: the embedded ONNX Runtime backend and the Triton backend (base: their interface)."""
