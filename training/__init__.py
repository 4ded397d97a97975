"""Model side of effx-serve: architecture spec, builder, counting, training and ONNX export.

Importing this package does not import torch; only `training.model` and `training.export` do.
"""
