# The team's MLflow tracking server: PostgreSQL backend store, artifacts proxied to S3 (MinIO).
# compose.yaml passes the `mlflow server` options; see there.
FROM python:3.11-slim-bookworm

ARG MLFLOW_SPEC="mlflow>=3.1,<4"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Version ranges, as in pyproject.toml (DL3013 asks for exact pins). psycopg 3 for postgresql+psycopg:// stores, boto3 for s3:// artifacts.
# hadolint ignore=DL3013
RUN pip install "${MLFLOW_SPEC}" "psycopg[binary]>=3.1,<4" "boto3>=1.34,<2" \
    && useradd --create-home --uid 1000 mlflow

USER 1000
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=12 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
ENTRYPOINT ["mlflow", "server"]
CMD ["--host", "0.0.0.0", "--port", "5000"]
