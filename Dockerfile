# notifier: build a wheel in one stage, run it from a virtualenv in a slim image.
#
#   docker build -t notifier .
#   docker run -e NOTIFIER_SMTP_HOST=smtp.example.com -e NOTIFIER_MAIL_FROM=... \
#     -e NOTIFIER_API_KEYS=... -v notifier-data:/data -p 8000:8000 notifier

# --- builder: wheel of the project, installed with its dependencies into /opt/venv ---
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# The locked runtime dependencies first (hashes checked): a layer that changes only
# when the lock file does.
COPY requirements/runtime.txt ./requirements/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --require-hashes -r requirements/runtime.txt

# pyproject.toml names README.md as the package readme, so the build needs it.
COPY pyproject.toml README.md ./
COPY notifier ./notifier
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/python -m pip install --no-deps /wheels/notifier-*.whl

# --- runtime ---
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NOTIFIER_HOST=0.0.0.0 \
    NOTIFIER_PORT=8000 \
    NOTIFIER_DATABASE_URL=sqlite:////data/notifier.db \
    NOTIFIER_ACK_FILE=/data/acknowledgments.jsonl \
    NOTIFIER_DEV_MAIL_DIR=/data/mail \
    NOTIFIER_TEMPLATE_DIR=/etc/notifier/templates

RUN groupadd --system --gid 10001 notifier \
 && useradd --system --uid 10001 --gid notifier --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin notifier \
 && mkdir /data \
 && chown notifier:notifier /data

COPY --from=builder /opt/venv /opt/venv
# The example templates; mount your own folder over /etc/notifier/templates.
COPY config/templates /etc/notifier/templates

# A new named volume starts as a copy of /data, owned by uid 10001.
WORKDIR /data
VOLUME /data
USER 10001:10001

EXPOSE 8000

# Liveness (/healthz), on the port the main process was started with: `notifier health`
# reads its --port, --host and --env-file, or NOTIFIER_PORT, from /proc/1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["notifier", "health"]

ENTRYPOINT ["notifier"]
CMD ["serve"]
