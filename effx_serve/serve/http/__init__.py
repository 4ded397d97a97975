"""The HTTP edge: the FastAPI app, request body parsing, and the one map from errors to HTTP statuses.
Everything else about a request happens in effx_serve.serve.flow.
"""
