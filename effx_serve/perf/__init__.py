"""Performance: roofline counting, the ONNX Runtime session factory, the timing protocol and profiler, the
latency store, the calibrated latency model, the paper's published latencies.

May import: effx_serve.core, effx_serve.hardware, training.arch (specs and their expansion).
"""
