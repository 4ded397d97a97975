"""Search and scaling: platform-aware NAS (nas/) and latency-aware compound scaling into a family (scaling/),
sharing the reward and the proxy-accuracy and latency evaluators.

May import: training, effx_serve.core, effx_serve.hardware, effx_serve.perf.
"""
