# The chital controller as an image, for docker-compose.yml (controller + PostgreSQL + Prometheus +
# Grafana). Build context: the repository root.
#
# No Docker engine exists on the project's development and CI machines: this file is checked with
# `docker-compose config -q` (which validates docker-compose.yml and its build section) but not built
# there. Build it where an engine runs: `docker-compose build controller`.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRPC_VERBOSITY=ERROR \
    PROMETHEUS_DISABLE_CREATED_SERIES=True

WORKDIR /opt/chital

# The generated API, errdefs and the PKI first (they change less often than the controller).
COPY proto/python/ /opt/chital/src/proto-python/
RUN pip install /opt/chital/src/proto-python/

# The controller with the PostgreSQL driver (psycopg 3, binary wheel: no libpq build needed) and
# its Alembic migrations (inside the package): `serve --migrate` applies them at start.
COPY controller/ /opt/chital/src/controller/
RUN pip install "/opt/chital/src/controller/[postgres]"

RUN useradd --system --home-dir /var/lib/chital --create-home chital \
    && mkdir -p /var/lib/chital/prometheus-targets \
    && chown -R chital:chital /var/lib/chital
USER chital

# 7443: gRPC API (ContainerService, HostService, health, reflection); 9471: /metrics.
EXPOSE 7443 9471
ENTRYPOINT ["chital-controller"]
CMD ["serve", "--listen", "0.0.0.0:7443", "--metrics-listen", "0.0.0.0:9471", "--state-dir", "/var/lib/chital", "--migrate"]
