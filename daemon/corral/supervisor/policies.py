"""Health policies: deciding, from heartbeats and /proc samples, which worker must go.

Pure decisions on plain data, so they are unit-tested without processes. Each
sampled policy (memory, fds) needs ``breaches`` consecutive samples over its
limit (hysteresis: one spike never recycles a worker); counters (requests,
lifetime) trip once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from corral.config import Config

# Reasons, as they appear in logs, `corral status` and (later) metrics.
CRASH = "crash"
HUNG = "hung"
BOOT_TIMEOUT = "boot_timeout"
BOOT_FAILED = "boot_failed"
MEMORY = "memory"
FDS = "fds"
MAX_REQUESTS = "max_requests"
LIFETIME = "lifetime"
DEADLINE = "deadline"
RELOAD = "reload"
SCALE_DOWN = "scale_down"
STOP = "stop"


def jittered_limits(config: Config, rng: random.Random | None = None) -> tuple[int, float]:
    """(max_requests, max_lifetime) for one new worker, each with its random jitter."""
    randint = rng.randint if rng is not None else random.randint
    uniform = rng.uniform if rng is not None else random.uniform
    max_requests = config.max_requests
    if max_requests and config.max_requests_jitter:
        max_requests += randint(0, config.max_requests_jitter)
    max_lifetime = config.max_lifetime
    if max_lifetime and config.max_lifetime_jitter:
        max_lifetime += uniform(0, config.max_lifetime_jitter)
    return max_requests, max_lifetime


@dataclass
class Verdict:
    reason: str
    detail: str


def check_sample(config: Config, sample: dict[str, int], breaches: dict[str, int]) -> Verdict | None:
    """Update the consecutive-breach counters from one /proc sample (corral.metrics.procfs); a Verdict when one trips."""
    verdict = None
    memory = sample.get(config.memory_metric)
    if config.max_memory and memory is not None:
        if memory > config.max_memory:
            breaches[MEMORY] = breaches.get(MEMORY, 0) + 1
            if breaches[MEMORY] >= config.policy_breaches:
                verdict = Verdict(MEMORY, f"{config.memory_metric.upper()} {_mib(memory)} > max_memory "
                                          f"{_mib(config.max_memory)} for {breaches[MEMORY]} samples")
        else:
            breaches[MEMORY] = 0
    fds = sample.get("fds")
    if config.max_fds and fds is not None:
        if fds > config.max_fds:
            breaches[FDS] = breaches.get(FDS, 0) + 1
            if breaches[FDS] >= config.policy_breaches and verdict is None:
                verdict = Verdict(FDS, f"{fds} open fds > max_fds {config.max_fds} "
                                       f"for {breaches[FDS]} samples")
        else:
            breaches[FDS] = 0
    return verdict


def check_counters(stats: dict[str, Any], age: float, max_requests: int, max_lifetime: float) -> Verdict | None:
    """The worker's own request (a WSGI request stuck past its deadline), max_requests and
    max_lifetime (both already jittered for this worker)."""
    wants = stats.get("wants_recycle")
    if wants:
        return Verdict(DEADLINE, str(wants))
    requests = int(stats.get("requests_total", 0) or 0)
    if max_requests and requests >= max_requests:
        return Verdict(MAX_REQUESTS, f"served {requests} requests (max_requests {max_requests})")
    if max_lifetime and age >= max_lifetime:
        return Verdict(LIFETIME, f"running for {age:.0f}s (max_lifetime {max_lifetime:.0f}s)")
    return None


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"
