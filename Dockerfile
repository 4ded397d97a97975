# The effx-serve serving image: the HTTP router without torch (the core install, no extras).
# The model repository is not baked in: mount one (built by `effx-serve build-repo`) at /models.
#
#   docker build -t effx-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/model_repository:/models:ro" effx-serve
#   docker run ... effx-serve --backend triton --triton-url triton:8000    # extra args are appended
#
# Not built here (no Docker engine where this was written); tests/test_deployment.py checks it statically
# and checks the install it performs (core dependencies only, no torch) in a fresh virtual environment.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the project and its core dependencies into a venv, copied whole into the final stage, so
# that the source tree, the build backend and pip's caches stay out of the final image.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Only what the wheel needs (pyproject's readme is README.md; packages effx_serve, training, search, loadtest:
# the CLI registers every stage's commands, torch-free at import). .dockerignore keeps the rest of the context out.
COPY pyproject.toml README.md ./
COPY effx_serve ./effx_serve
COPY training ./training
COPY search ./search
COPY loadtest ./loadtest
# No extras: torch and the training stack are never imported on the serving path.
RUN /opt/venv/bin/pip install . \
    && /opt/venv/bin/python -c "import effx_serve.serve.http.app, effx_serve.serve.server, effx_serve.cli" \
    && ! /opt/venv/bin/python -c "import torch" 2>/dev/null

# --- final: the base image, the venv, a non-root user.
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
COPY --from=build /opt/venv /opt/venv
# A home directory because effx-serve keeps its cache in ~/.cache/effx-serve ($EFFX_CACHE_DIR overrides).
RUN useradd --create-home --uid 10001 --user-group effx
WORKDIR /home/effx
USER 10001:10001

EXPOSE 8000
# Liveness only (/healthz answers as soon as the process is up; /readyz waits for warm models).
# slim has no curl: Python's urllib raises on a non-2xx answer or no answer, so the exit status is 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# --repo /models sits in the entrypoint, not in CMD, so that arguments given to `docker run` or compose's
# `command:` are appended instead of replacing it; a later --repo (or any other flag) still overrides it,
# argparse keeping the last value. Changing --port also needs EXPOSE and the HEALTHCHECK changed.
ENTRYPOINT ["effx-serve", "serve", "--host", "0.0.0.0", "--port", "8000", "--repo", "/models"]
CMD []
