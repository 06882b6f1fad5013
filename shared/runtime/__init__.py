"""The process around the app: settings, logs, metrics, gunicorn parts and the operator's commands."""
