"""The operator's commands: list failed agent deliveries, and send them again.

Both read only the settings they use from the app's config: `failed-triggers` the state store's
(STORE_SETTINGS in shared/runtime/settings.py), `redeliver` those and the webhook's
(WEBHOOK_SETTINGS). Every error is one line and a non-zero exit.
"""

import contextlib
import json
import logging
from collections.abc import Iterator

import click
from flask import Flask, current_app
from flask.cli import ScriptInfo, with_appcontext
from redis.exceptions import RedisError

from shared.delivery.webhook import AgentWebhook
from shared.flow.redelivery import redeliver
from shared.runtime.settings import ConfigError, parse_store_settings, parse_webhook_settings
from shared.store.connection import REDIS_UNAVAILABLE, connect_redis
from shared.store.repository import FAILED_KEEP, StateRepository, claim_lease_seconds


def under_flask_cli() -> bool:
    """True while the `flask` command line is loading or running the app (not under gunicorn)."""
    context = click.get_current_context(silent=True)
    return context is not None and context.find_object(ScriptInfo) is not None


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a bad setting or an unreachable Redis into click's one-line `Error: ...` and exit 1."""
    try:
        yield
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except REDIS_UNAVAILABLE as exc:
        raise click.ClickException(f"Redis is unavailable: {type(exc).__name__}: {exc}") from None
    except RedisError as exc:
        raise click.ClickException(f"Redis refused the command: {type(exc).__name__}: {exc}") from None


def _store():
    """The store settings and a StateRepository, from the app's config."""
    settings = parse_store_settings(current_app.config)
    return settings, StateRepository(connect_redis(settings), settings.cooldown_seconds, mode=settings.mode)


def _namespaces(settings, given):
    """The namespaces asked for (all allowed ones when none), refusing any that is not allowed."""
    refused = sorted(set(given) - settings.allowed_namespaces)
    if refused:
        allowed = ", ".join(sorted(settings.allowed_namespaces))
        raise click.ClickException(f"namespace {', '.join(refused)} is not in ALLOWED_NAMESPACES ({allowed})")
    return list(dict.fromkeys(given)) or sorted(settings.allowed_namespaces)


namespace_option = click.option(
    "--namespace", "namespaces", multiple=True, help="Only this namespace (repeatable); default: every allowed one."
)


@click.command("failed-triggers")
@namespace_option
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, FAILED_KEEP), help="Newest to show.")
@with_appcontext
def failed_triggers_command(namespaces: tuple[str, ...], limit: int) -> None:
    """Print the newest failed agent deliveries, one JSON record per line."""
    with one_line_errors():
        settings, repository = _store()
        for namespace in _namespaces(settings, namespaces):
            for record in repository.failed_triggers(namespace, limit):
                click.echo(json.dumps(record, sort_keys=True))


@click.command("redeliver")
@namespace_option
@click.option("--webhook-id", help="Send only the failed delivery with this webhook-id.")
@click.option(
    "--limit", default=20, show_default=True, type=click.IntRange(1, FAILED_KEEP), help="Newest to send again."
)
@with_appcontext
def redeliver_command(namespaces: tuple[str, ...], webhook_id: str | None, limit: int) -> None:
    """Send failed agent deliveries again, newest first; what is delivered leaves the list.

    A deployment whose cooldown window has been claimed since the failure is not sent again.
    """
    with one_line_errors():
        settings, repository = _store()
        namespaces = _namespaces(settings, namespaces)
        webhook_settings = parse_webhook_settings(current_app.config)
        webhook = AgentWebhook.from_settings(webhook_settings)
        # Claims held while sending: for what this delivery and its Redis steps may take.
        lease = claim_lease_seconds(settings.redis_timeout, webhook_settings.webhook_budget)
        repository = StateRepository(
            repository.redis, settings.cooldown_seconds, claim_lease_seconds=lease, mode=settings.mode
        )
        pending = []
        for namespace in namespaces:
            records = repository.failed_triggers(namespace, FAILED_KEEP if webhook_id else limit)
            pending += [(namespace, r) for r in records if not webhook_id or r.get("webhook_id") == webhook_id]
        if webhook_id and not pending:
            raise click.ClickException(f"no failed delivery has webhook-id {webhook_id}")
        pending.sort(key=lambda entry: entry[1].get("failed_at", ""), reverse=True)
        failures = 0
        with _quiet_attempt_logs():
            for namespace, record in pending[:limit]:
                try:
                    result = redeliver(repository, webhook, namespace, record)
                except (KeyError, TypeError, ValueError) as exc:
                    # Not a record ingest wrote: say so, leave it for a person, and go on with the rest.
                    click.echo(
                        f"unreadable {record.get('webhook_id', 'record')} {namespace}: {exc!r}; left in the list"
                    )
                    failures += 1
                    continue
                click.echo(_describe(namespace, result))
                failures += not result.ok
    if not pending:
        click.echo("no failed deliveries to send")
    if failures:
        raise click.ClickException(f"{failures} of {min(len(pending), limit)} redeliveries failed; they stay listed")


@contextlib.contextmanager
def _quiet_attempt_logs():
    """The command prints one line per delivery; the attempts' own log lines belong to the services."""
    logger = logging.getLogger("aggregator")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _describe(namespace, result):
    """One line saying what a redelivery did."""
    parts = []
    if result.sent:
        names = ", ".join(result.sent)
        delivery = result.delivery
        if delivery.ok:
            parts.append(f"delivered {result.webhook_id} {namespace}: {names} (HTTP {delivery.status_code})")
        else:
            parts.append(
                f"failed {result.webhook_id} {namespace}: {names}: {delivery.error} after "
                f"{delivery.attempts} attempt(s); kept in the list"
            )
    if result.superseded:
        names = ", ".join(result.superseded)
        verb = "skipped" if result.sent else f"superseded {result.webhook_id} {namespace}:"
        parts.append(f"{verb} {names} (cooldown window claimed since the failure)")
    return "; ".join(parts)


def init_app(app: Flask) -> None:
    """Add the operator's commands to an app."""
    app.cli.add_command(failed_triggers_command)
    app.cli.add_command(redeliver_command)
