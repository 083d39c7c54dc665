"""CPU time and memory of a process tree, read from /proc (Linux only).

`schedstat` gives the CPU time in nanoseconds; `stat` splits it into user and
kernel time, but only in clock ticks (10 ms), so it serves for the split alone.
A gateway started with WORKERS > 1 is a parent and its workers: every figure
covers the whole tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
# Fields of /proc/<pid>/stat after the `(comm)` field: state is index 0.
PPID_INDEX, UTIME_INDEX, STIME_INDEX = 1, 11, 12


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU used so far by a process tree."""

    total_seconds: float
    user_seconds: float
    system_seconds: float

    def __add__(self, other: CpuSample) -> CpuSample:
        return CpuSample(
            self.total_seconds + other.total_seconds,
            self.user_seconds + other.user_seconds,
            self.system_seconds + other.system_seconds,
        )

    def __sub__(self, earlier: CpuSample) -> CpuSample:
        return CpuSample(
            self.total_seconds - earlier.total_seconds,
            self.user_seconds - earlier.user_seconds,
            self.system_seconds - earlier.system_seconds,
        )

    @property
    def system_share(self) -> float:
        """The kernel's part of the CPU time (from clock ticks: rough for short spans)."""
        ticks = self.user_seconds + self.system_seconds
        return self.system_seconds / ticks if ticks > 0 else 0.0


def stat_fields(text: str) -> list[str]:
    """The fields of a /proc/<pid>/stat line after `(comm)`, which may hold spaces."""
    return text[text.rindex(")") + 2 :].split()


def schedstat_seconds(text: str) -> float:
    """The CPU time in a /proc/<pid>/task/<tid>/schedstat line (nanoseconds first)."""
    return int(text.split()[0]) / 1e9


def rss_kib(status_text: str) -> int:
    """`VmRSS` from a /proc/<pid>/status text, in KiB (0 for a zombie)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(stat_fields((entry / "stat").read_text())[PPID_INDEX])
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is `pid`."""
    return _children_by_parent().get(pid, [])


def process_tree(root: int) -> list[int]:
    """`root` and every live descendant."""
    children = _children_by_parent()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def command_line(pid: int) -> str:
    """The command line of `pid`, its arguments joined by spaces."""
    return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def cpu(root: int) -> CpuSample:
    """CPU used so far by `root` and its descendants (all threads)."""
    total = CpuSample(0.0, 0.0, 0.0)
    for pid in process_tree(root):
        try:
            total = total + cpu_of_process(pid)
        except (OSError, ValueError):
            continue  # the process ended while we looked
    return total


def cpu_of_process(pid: int) -> CpuSample:
    """CPU used so far by one process (all its threads), without its descendants."""
    fields = stat_fields((PROC / str(pid) / "stat").read_text())
    total = sum(
        schedstat_seconds(task.joinpath("schedstat").read_text())
        for task in (PROC / str(pid) / "task").iterdir()
    )
    return CpuSample(
        total,
        int(fields[UTIME_INDEX]) / TICKS_PER_SECOND,
        int(fields[STIME_INDEX]) / TICKS_PER_SECOND,
    )


def rss(root: int) -> int:
    """Resident memory of `root` and its descendants, in KiB."""
    total = 0
    for pid in process_tree(root):
        try:
            total += rss_kib((PROC / str(pid) / "status").read_text())
        except OSError:
            continue
    return total


def own_cpu() -> CpuSample:
    """CPU used so far by this process."""
    return cpu_of_process(os.getpid())
