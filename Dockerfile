# Slim, non-root image running `agent-sre run` on the embedded default,
# listening on all interfaces inside the container.
FROM python:3.11-slim AS build
WORKDIR /src
# gcc builds the optional C decoder and encoders of OTLP trace requests and the normalisation step
# (pipeline/pdata/_otlp_*.c, _normalize.c; setup.py).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md setup.py ./
COPY pipeline pipeline
COPY receivers receivers
COPY processors processors
COPY exporters exporters
COPY config config
# A regular (non-editable) install: only what pyproject's package list ships reaches the image.
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
# The data directory must exist in the image, owned by the runtime user: a named volume mounted on
# it copies this ownership, whereas a VOLUME path missing from the image is created root-owned.
RUN useradd --system --user-group --uid 10001 --home-dir /var/lib/agent-sre --create-home agent-sre \
 && install -d -o agent-sre -g agent-sre -m 0750 /var/lib/agent-sre/data
COPY --from=build /install /usr/local
USER 10001
WORKDIR /var/lib/agent-sre
ENV AGENT_SRE_OTLP_GRPC_ENDPOINT=0.0.0.0:4317 \
    AGENT_SRE_OTLP_HTTP_ENDPOINT=0.0.0.0:4318 \
    AGENT_SRE_ADMIN_ENDPOINT=0.0.0.0:13133 \
    AGENT_SRE_ADMIN_ALLOWED_HOST=agent-sre \
    AGENT_SRE_METRICS_ADDRESS=0.0.0.0:8888 \
    AGENT_SRE_PROMETHEUS_ENDPOINT=0.0.0.0:8889 \
    AGENT_SRE_DATA=/var/lib/agent-sre/data
# Fail the build, not the first start, if a module or dependency did not make it into the install:
# this imports every built-in component and checks the embedded default under the settings above.
RUN agent-sre validate
# ... and the C decoder and encoders made it into the image (without them the receiver is 5-6x costlier
# per span, the first OTLP exporter ~6x, and OTLP/JSON ~7x).
RUN python -c "import agent_sre.pipeline.pdata._otlp_decode, agent_sre.pipeline.pdata._otlp_encode, agent_sre.pipeline.pdata._otlp_json, agent_sre.pipeline.pdata._normalize"
EXPOSE 4317 4318 13133 8888 8889
VOLUME ["/var/lib/agent-sre/data"]
ENTRYPOINT ["agent-sre"]
CMD ["run"]
