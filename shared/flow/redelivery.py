"""Sending a failed delivery again: claim first as ingest does, same webhook-id, settle, tidy the failed list."""

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.core.episodes import CHANGED, RESOLVED
from shared.delivery.webhook import AgentWebhook, Delivery
from shared.flow.ingest import episode_block, failed_record, mirror_after
from shared.store.repository import StateRepository


@dataclass
class Redelivery:
    """What sending one kept record again did."""

    webhook_id: str
    sent: list = field(default_factory=list)  # deployments sent again
    superseded: list = field(default_factory=list)  # deployments whose window was claimed since
    delivery: Delivery | None = None  # when something was sent

    @property
    def ok(self) -> bool:
        """True unless a delivery was attempted and failed."""
        return self.delivery is None or self.delivery.ok


def redeliver(
    repository: StateRepository,
    webhook: AgentWebhook,
    namespace: str,
    record: dict[str, Any],
    now: float | None = None,
) -> Redelivery:
    """Send a record of triggers:{namespace}:failed again; return a Redelivery.

    Every deployment is claimed first, exactly as ingest claims it, so a deployment whose cooldown
    window has been claimed since the failure is not sent a second time. An escalation goes again
    only into the window it escalated, under the escalation claim. Delivered, the record leaves the
    list; failed, it is replaced by one naming the latest error.
    """
    now = time.time() if now is None else now
    message = record["message"]
    items = {item["deployment"]: item for item in message["triggers"]}
    webhook_id = record.get("webhook_id") or f"msg_{uuid.uuid4().hex}"
    result = Redelivery(webhook_id)

    running = repository.running_windows(namespace, list(items))
    built_at = datetime.fromisoformat(message["sent_at"]).timestamp()
    # An escalation goes again only into the window it escalated: one claimed no later than the
    # message was built. Any other running window was claimed since, and holds its deployment back.
    risky = {
        name
        for name, item in items.items()
        if item.get("escalation") and name in running and running[name][0] <= built_at
    }
    # The items keep their ids: the agent may have seen them before the delivery failed. A
    # resolved item is not sent again: the next quiet sample resolves its episode anew.
    resendable = [name for name, item in items.items() if item.get("episode", {}).get("notify") != RESOLVED]
    ids = {name: items[name]["id"] for name in resendable if items[name].get("id")}
    changed = [name for name in resendable if items[name].get("episode", {}).get("notify") == CHANGED]
    # An episode the failure closed again opens anew under the same id.
    episode_ids = {name: items[name]["episode"]["id"] for name in resendable if items[name].get("episode")}
    claims = repository.claim(namespace, resendable, risky, now, ids, changed, episode_ids)
    result.sent = claims.sent
    result.superseded = [name for name in items if name not in result.sent]

    if result.sent:
        escalated_names = set(claims.escalated)
        triggers = []
        for name in result.sent:
            item = {key: value for key, value in items[name].items() if key != "escalation"}
            if name in escalated_names:
                item["escalation"] = True
            if "episode" in item:
                # Where it stands now: the failure gave its place in the episode back.
                item["episode"] = episode_block(claims.episodes[name], item["episode"].get("changed", []))
            triggers.append(item)
        message = {**message, "triggers": triggers}
        result.delivery = webhook.deliver(message, record.get("request_id") or uuid.uuid4().hex, webhook_id)
        if result.delivery.ok:
            reasons = {item["deployment"]: item["reasons"] for item in triggers}
            # What the app hash keeps of each episode, as after an ingest (the last item is this one).
            mirrors = {
                item["deployment"]: mirror_after(
                    item, claims.episodes[item["deployment"]], None, item["deployment"] in claims.claimed, now
                )
                for item in triggers
                if "episode" in item
            }
            repository.settle_delivered(namespace, claims, reasons, mirrors)
        else:
            again = failed_record(message, result.delivery, record.get("request_id"))
            repository.settle_failed(namespace, claims, again)
    # Delivered, superseded or replaced by its newer failure: the old record has done its job.
    repository.remove_failed(namespace, record)
    return result
