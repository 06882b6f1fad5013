# One image for both services; APP_MODULE picks which one gunicorn serves.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    APP_MODULE="cost_service:create_app()"

WORKDIR /app

# The locked requirements in their own layer, so a code change does not reinstall them. Every
# package must match a hash in the lock: the image built next month holds what was tested today.
COPY requirements.lock .
RUN pip install --require-hashes --no-deps -r requirements.lock

# Only what runs; tests and tooling stay out of the image.
COPY gunicorn.conf.py .
COPY shared/ shared/
COPY cost_service/ cost_service/
COPY forecast_service/ forecast_service/
COPY devtools/ devtools/

RUN groupadd --system --gid 10001 app && useradd --system --uid 10001 --gid 10001 --no-create-home app
# Numeric, so Kubernetes' runAsNonRoot can verify it without a runAsUser of its own.
USER 10001:10001

EXPOSE 8000 8002
# gunicorn parses WEB_CONCURRENCY itself before gunicorn.conf.py runs, with a traceback for a bad
# value: check the settings first, for the same one-line error. exec, so gunicorn itself receives
# docker's SIGTERM and shuts down gracefully.
CMD python -m shared.runtime.gunicorn_settings && exec gunicorn -c gunicorn.conf.py "$APP_MODULE"
