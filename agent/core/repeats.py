"""Former name of `agent.core.backoff` (retry back-off and log thinning), kept so existing imports still work."""

from agent.core.backoff import backoff_s, worth_logging

__all__ = ["backoff_s", "worth_logging"]
