# orchestrator in a container: plans are mounted at /plans, tokens come from the
# environment or from files mounted as secrets (token_file).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
RUN pip install ".[redis]" && rm -rf /src

RUN useradd --create-home --uid 10001 orchestrator \
    && mkdir -p /plans /state \
    && chown orchestrator /state
USER orchestrator
WORKDIR /plans
ENV ORCHESTRATOR_STATE_DIR=/state
VOLUME ["/plans", "/state"]

ENTRYPOINT ["orchestrator"]
CMD ["--help"]
