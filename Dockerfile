# The gateway image: Python and the gateway's own dependencies, no TensorFlow.
# Build: docker build -t infergate .
# Run:   docker run -p 8500:8500 -p 8501:8501 -v $PWD/config:/etc/infergate infergate
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY policies ./policies
COPY replica ./replica
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 infergate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/gateway.yaml /etc/infergate/gateway.yaml
USER infergate
EXPOSE 8500 8501 9901
# The admin port binds 127.0.0.1 by default; the probes below run inside the container.
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=1)" || exit 1
ENTRYPOINT ["infergate"]
CMD ["run", "--config", "/etc/infergate/gateway.yaml"]
