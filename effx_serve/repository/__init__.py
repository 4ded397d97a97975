"""The Triton model repository: manifest and its schema, config.pbtxt, build-repo, check-repo, the Python-backend
model, and a local tritonserver.

May import: effx_serve.core, effx_serve.hardware, effx_serve.perf, training. Reading a repository (manifest,
triton_config) never imports torch; building one exports models with it.
"""
