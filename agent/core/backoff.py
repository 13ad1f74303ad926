"""Repeated failures: how long to wait before the next try, and which occurrences to log.

One formula for every retry in the product (a lost camera, a crashed child process, a checkpoint
or export that hit a full disk): exponential back-off, doubling from `first_s` and capped at
`max_s`, so a fault that lasts a while is neither hammered nor waited on for too long. And one rule
for counted faults that can arrive by the thousand (malformed messages, refused handshakes, lost
metric lines): log the first and then every `every`-th, so the log shows that it happens and how
often without drowning.
"""

from __future__ import annotations


def backoff_s(attempt: int, *, first_s: float, max_s: float) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): first_s · 2^(attempt−1), at most max_s."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    return min(max_s, first_s * 2.0 ** min(attempt - 1, 64))


def worth_logging(count: int, every: int = 100) -> bool:
    """Whether occurrence `count` (1, 2, ...) of a repeated fault gets a log line: the 1st and each `every`-th."""
    return count == 1 or (count > 0 and count % every == 0)
