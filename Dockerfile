# orchestrator in a container: plans are mounted at /plans, tokens come from the
# environment or from files mounted as secrets (token_file).
FROM python:3.12-slim

LABEL org.opencontainers.image.title="orchestrator" \
      org.opencontainers.image.description="Reset wolkvox dialer campaigns in bulk, safely: one clear_campaign call at a time per token." \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="0.1.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY orchestrator ./orchestrator
RUN pip install ".[redis]" && rm -rf /src

RUN useradd --create-home --uid 10001 orchestrator \
    && mkdir -p /plans /state \
    && chown orchestrator /state
USER orchestrator
WORKDIR /plans
ENV ORCHESTRATOR_STATE_DIR=/state
# Only the journal and locks are state; plans are mounted read-only where needed.
VOLUME ["/state"]

ENTRYPOINT ["orchestrator"]
CMD ["--help"]
