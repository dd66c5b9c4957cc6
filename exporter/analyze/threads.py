"""How many cores to use on a shared machine: torch threads from the cores other work leaves free, and LAPACK
on one thread (two LAPACK threads spinning against other load ran many times slower in development runs).

Entry points: `busy_cores`, `pick_threads`, `lapack_threads`.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager

import torch


def busy_cores(interval: float = 1.0) -> float:
    """How many cores other processes keep busy now: /proc/stat sampled over `interval` seconds (the load
    average lags by minutes); the 1-minute load average where /proc/stat is missing."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)                  # idle + iowait
        return sum(fields), idle
    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    cores = os.cpu_count() or 1
    return cores * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def pick_threads(requested: int, busy: float) -> int:
    """Torch threads for this run. Auto (0): the cores other processes leave free, at least one. On a shared
    2-core machine, two threads contending with another busy process ran the decoder several times slower than
    one in development runs, so a busy machine gets one thread."""
    if requested > 0:
        return requested
    cores = os.cpu_count() or 1
    return max(1, min(cores, cores - round(busy)))


@contextmanager
def lapack_threads(n: int = 1):
    """Eigen- and singular-value solvers on one thread: on a shared 2-core machine, two LAPACK threads spin
    against the other load and ran many times slower than one in development runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
