"""How long and how hard the fuzz suite runs: a Hypothesis profile chosen by ``FUZZ_PROFILE``.

- ``ci`` (the default, ``make test``): :data:`CI_PROBES` probes shared by the RPCs of the contracts
  (at least :data:`CI_MIN_EXAMPLES` each), bodies up to 256 KiB (and a few just past the message
  limit), seed ``FUZZ_SEED`` or 0: the same probes every run (for the same contracts), about a
  minute in all on two cores, however many RPCs later issues add.
- ``long`` (``make fuzz``): ``FUZZ_SECONDS`` (default 600) shared by every RPC, each fuzzed in
  rounds of :data:`ROUND_EXAMPLES` probes until its share is spent, bodies up to the message limit.
  Round *k* uses seed ``FUZZ_SEED + k``; ``make fuzz`` draws ``FUZZ_SEED`` and prints it, and every
  failure prints the command that replays its round for its RPC.

Neither profile keeps a Hypothesis database: a failure is reproduced by its seed, and Hypothesis
prints its smallest failing probe (method, target, body hex, headers) for each kind of failure.
Shrinking is bounded per round (calls and seconds) and per run (seconds: 2 minutes under ``ci``),
so a broken build still finishes in minutes: past the bound the smallest probe found so far is
reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, settings

CI_PROBES = 2500
"""The ``ci`` profile's probes in all: 15 to 20 ms each, so under a minute on two shared cores."""

CI_MIN_EXAMPLES = 10
"""The fewest probes an RPC gets under ``ci``, however many RPCs share :data:`CI_PROBES`."""

ROUND_EXAMPLES = 30
KIB = 1024

_COMMON = {
    "deadline": None,
    "database": None,
    "derandomize": False,
    "print_blob": False,
    # Every example is a call to a real mesh: slow and large by Hypothesis' standards, on purpose.
    "suppress_health_check": list(HealthCheck),
    # No "explain" phase: it replays the failing probe many more times to comment on it.
    "phases": (Phase.explicit, Phase.generate, Phase.shrink),
}
settings.register_profile("ci", max_examples=CI_MIN_EXAMPLES, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("long", max_examples=ROUND_EXAMPLES, **_COMMON)  # type: ignore[arg-type]


@dataclass(frozen=True)
class FuzzProfile:
    """The chosen profile.

    Attributes:
        name: ``ci`` or ``long``.
        seed: The seed of the first round.
        seconds: The whole run's time, shared by the RPCs; 0 for one round each.
        max_body_bytes: The largest inflated body within the message limit; None for the limit itself.
        shrink_calls: How many calls shrinking may make in a round, after generating.
        shrink_seconds: How long shrinking may take in a round (a probe that makes the edge drop
            its connection costs a second per call).
        shrink_total_seconds: How long shrinking may take in the whole run.

    """

    name: str
    seed: int
    seconds: float
    max_body_bytes: int | None
    shrink_calls: int
    shrink_seconds: float
    shrink_total_seconds: float

    def settings(self, rpcs: int) -> settings:
        """The Hypothesis settings of one round, when the contracts have ``rpcs`` RPCs.

        Under ``ci`` the count is every RPC's, not only those selected (``-k``): a replay of one RPC
        makes the same probes as the whole run.
        """
        profile = settings.get_profile(self.name)
        if self.name != "ci":
            return profile
        return settings(profile, max_examples=max(CI_MIN_EXAMPLES, CI_PROBES // max(1, rpcs)))

    def reproduce(self, seed: int, rpc: str) -> str:
        """The command that replays the round of ``seed`` for one RPC (that round alone)."""
        # FUZZ_SECONDS=0: one round, not the run's time all spent on this RPC.
        seconds = " FUZZ_SECONDS=0" if self.name == "long" else ""
        return (
            f"FUZZ_PROFILE={self.name} FUZZ_SEED={seed}{seconds} "
            f".venv/bin/python -m pytest tests/fuzz -k '{rpc}'"
        )


def current() -> FuzzProfile:
    """The profile ``FUZZ_PROFILE``, ``FUZZ_SEED`` and ``FUZZ_SECONDS`` select."""
    name = os.environ.get("FUZZ_PROFILE", "ci")
    if name not in ("ci", "long"):
        raise ValueError(f"FUZZ_PROFILE must be ci or long, not {name!r}")
    seed = int(os.environ.get("FUZZ_SEED", "0"))
    if name == "ci":
        return FuzzProfile(
            name, seed, 0.0, 256 * KIB, shrink_calls=60, shrink_seconds=5.0, shrink_total_seconds=120.0
        )
    seconds = float(os.environ.get("FUZZ_SECONDS", "600"))
    return FuzzProfile(
        name,
        seed,
        seconds,
        None,
        shrink_calls=300,
        shrink_seconds=20.0,
        shrink_total_seconds=max(120.0, seconds / 3),
    )
