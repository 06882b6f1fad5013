"""What calling the agent takes; shared.runtime.settings reads it from the environment."""

from dataclasses import dataclass


@dataclass(frozen=True)
class WebhookSettings:
    """What calling the agent takes."""

    webhook_url: str
    webhook_connect_timeout: float
    webhook_read_timeout: float
    webhook_budget: float
    webhook_secret: str | None
