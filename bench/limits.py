"""Open-file limits high enough for thousands of sockets in one process."""

from __future__ import annotations

import resource


def raise_open_files() -> int:
    """Lift this process's soft RLIMIT_NOFILE to the hard limit; return the new soft limit.

    Children inherit it, so the runner's servers and load client get it too.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
