"""slack: alert notifications to a Slack incoming webhook, as Block Kit blocks."""

from __future__ import annotations

from pydantic import Field

from agent_sre.exporters.alerting.channel import ChannelExporter, post_json
from agent_sre.exporters.alerting.notifier import Notification, RoutingConfig
from agent_sre.pipeline.component import Factory, Kind

_MAX_BLOCKS = 50  # Slack's limits: 50 blocks a message, 150 characters a header, 3000 a section
_MAX_HEADER = 150
_MAX_SECTION = 3000


class SlackConfig(RoutingConfig):
    webhook_url: str = Field(pattern=r"^https?://")


def slack_payload(n: Notification) -> dict:
    firing = [a for a in n.alerts if a.state == "firing"]
    title = (f"[{n.status.upper()}:{len(firing)}] " + " ".join(f"{k}={v}" for k, v in n.group_labels.items()))
    blocks: list[dict] = [{"type": "header", "text": {"type": "plain_text", "text": title[:_MAX_HEADER]}}]
    for a in n.alerts[:_MAX_BLOCKS - 2]:
        mark = ":red_circle:" if a.state == "firing" else ":large_green_circle:"
        text = f"{mark} *{a.state}* `{a.name}`\n{a.summary}"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:_MAX_SECTION]}})
    if len(n.alerts) > _MAX_BLOCKS - 2:
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"and {len(n.alerts) - (_MAX_BLOCKS - 2)} more"}]})
    return {"text": title, "blocks": blocks}


class SlackExporter(ChannelExporter):
    config: SlackConfig

    def deliver(self, notification: Notification) -> None:
        post_json(self.config.webhook_url, slack_payload(notification), timeout=self.config.timeout)


factory = Factory(type="slack", kind=Kind.EXPORTER, config_model=SlackConfig, create=SlackExporter,
                  signals=("events",), description="Alert notifications to a Slack incoming webhook (Block Kit).")
