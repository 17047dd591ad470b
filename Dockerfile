# The operator image (what the Helm chart's Deployment runs): slim Python, no torch.
# Build from the repository root:  docker build -t ghcr.io/loraf/operator:0.1.0 .
# The trainer image is trainer_image/Dockerfile (CUDA base, torch); both install this
# repository's one pyproject.toml with the pins of hack/constraints.txt.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/loraf
ENV PATH=/opt/loraf/bin:$PATH
WORKDIR /src

# Only what the operator imports: the API models and the operator package (no trainer,
# so no torch). loraf_dev is dev tooling: pyproject maps it, so an empty one stands in.
COPY pyproject.toml README.md ./
COPY hack/constraints.txt hack/constraints.txt
COPY operator/loraf_operator operator/loraf_operator
RUN mkdir -p hack/loraf_dev trainer_image/loraf_trainer \
 && touch hack/loraf_dev/__init__.py trainer_image/loraf_trainer/__init__.py \
 && pip install -c hack/constraints.txt ".[operator]" \
 && rm -rf /src

# Same uid as the trainer image and the chart's podSecurityContext (runAsUser 1000).
RUN useradd --uid 1000 --no-create-home --shell /usr/sbin/nologin loraf
USER 1000:1000
WORKDIR /tmp

EXPOSE 8080 8081
# kopf's liveness endpoint (LORAF_HEALTH_PORT, default 8081); the chart's probes use the
# same path. Python's urllib: the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LORAF_HEALTH_PORT', '8081'), timeout=4)"]

# Exec form: the operator is PID 1 and gets SIGTERM directly (kopf stops gracefully).
ENTRYPOINT ["loraf-operator"]
