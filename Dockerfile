# Slim, non-root image running `agent-sre run` on the embedded default,
# listening on all interfaces inside the container.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline pipeline
COPY receivers receivers
COPY processors processors
COPY exporters exporters
COPY config config
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/agent-sre --create-home agent-sre
COPY --from=build /install /usr/local
USER 10001
WORKDIR /var/lib/agent-sre
ENV AGENT_SRE_OTLP_GRPC_ENDPOINT=0.0.0.0:4317 \
    AGENT_SRE_OTLP_HTTP_ENDPOINT=0.0.0.0:4318 \
    AGENT_SRE_ADMIN_ENDPOINT=0.0.0.0:13133 \
    AGENT_SRE_METRICS_ADDRESS=0.0.0.0:8888 \
    AGENT_SRE_DATA=/var/lib/agent-sre/data
EXPOSE 4317 4318 13133 8888
VOLUME ["/var/lib/agent-sre/data"]
ENTRYPOINT ["agent-sre"]
CMD ["run"]
