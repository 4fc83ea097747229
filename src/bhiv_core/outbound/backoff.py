"""The retry schedule every outbound delivery uses: exponential backoff, capped, with jitter.

Shared by sentinel's alert delivery and integrations' webhook deliveries. The wait after the
``n``-th failed attempt is ``min(cap, base * 2**(n-1))`` times a random factor in [0.5, 1): the
doubling backs off a receiver that is down, the cap keeps a long outage from pushing the next
attempt days out, and the jitter spreads the retries of many deliveries that failed together
(a receiver that was down for everyone) so they do not come back in step.
"""

from __future__ import annotations

__all__ = ["retry_delay"]


def retry_delay(attempts: int, base: float, cap: float, jitter: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1-based).

    Args:
        attempts: How many attempts have failed so far (at least 1).
        base: The wait after the first failure, before jitter.
        cap: The longest wait, before jitter.
        jitter: A number in [0, 1) (``random.random()``; tests pin it).

    """
    exponent = min(max(attempts, 1) - 1, 62)  # 2**62 already exceeds any cap; no float overflow
    return float(min(cap, base * 2**exponent) * (0.5 + jitter / 2))
