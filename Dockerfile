# syntax=docker/dockerfile:1

# One image for every Kairos service. Pick the service with the command:
#
#   docker build -t kairos:dev .
#   docker run --rm kairos:dev serve registry
#
# No HEALTHCHECK here: each service checks a different endpoint, so docker-compose.yml defines them.

# --- build: install the package (non-editable) and its dependencies into a virtualenv ---
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/kairos
ENV PATH=/opt/kairos/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY libs/ libs/
COPY services/ services/
COPY protos/ protos/
RUN pip install --no-cache-dir .

# --- runtime: the virtualenv only, run as an unprivileged user ---
FROM python:3.11-slim

ENV PATH=/opt/kairos/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 kairos \
    && useradd --system --uid 10001 --gid kairos --create-home --home-dir /home/kairos \
       --shell /usr/sbin/nologin kairos

COPY --from=build /opt/kairos /opt/kairos

USER 10001:10001
WORKDIR /home/kairos

# gRPC (every service) and HTTP (ingress).
EXPOSE 50051 8080

ENTRYPOINT ["kairos"]
CMD ["--help"]
