# syntax=docker/dockerfile:1
# Build stage: wheels for Kairos and its dependencies (compilers stay out of the runtime image).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kairos ./kairos
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[http2]"

# Runtime stage: non-root, config at /app/config.json (the kairos-rs image's location).
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin kairos
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY examples/config.json /app/config.json
ENV KAIROS_CONFIG_PATH=/app/config.json \
    KAIROS_HOST=0.0.0.0 \
    KAIROS_PORT=5900 \
    PYTHONUNBUFFERED=1
USER kairos
EXPOSE 5900
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:5900/health', timeout=2).status != 200)"]
CMD ["kairos", "run"]
