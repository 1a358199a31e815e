# One image for every process; the command chooses which:
#   python eventhorizon.py           the API (default)
#   python eventhorizon.py migrate   apply the migrations and exit
#   python worker.py                 the job consumer
#   python relay.py                  outbox -> ClickHouse
#
# It runs from the source tree in /app (the working directory puts the flat modules on the
# path): nothing of the project is installed into site-packages, only its dependencies, and
# core.py reads sql/, log_entry.schema.json and static/ next to itself.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EH_HTTP_HOST=0.0.0.0 \
    LOG_FORMAT=json

RUN useradd --system --user-group --uid 10001 --home-dir /app --no-create-home eventhorizon

WORKDIR /app

# The dependencies in a layer of their own, rebuilt only when pyproject.toml changes. Only
# `dependencies`: the `embedded` extra (chDB, ~800 MB) is for CLICKHOUSE_URL=chdb://, and the
# image's relay writes to a ClickHouse server.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .
RUN mkdir -p /app/var \
    && chown eventhorizon:eventhorizon /app/var

USER eventhorizon
EXPOSE 8080
CMD ["python", "eventhorizon.py"]
