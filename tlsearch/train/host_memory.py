"""Keep freed host memory in the training process instead of handing it back to the OS every step.

Each training step allocates and frees the same large host buffers (activations and gradients on a
CPU, collated batches before the copy to a GPU). glibc's malloc gives such memory back to the kernel
as soon as it is freed: buffers above its mmap threshold are unmapped, and a thread's own arena (Ray
runs every training loop in a thread: Tune's function runner, Ray Train's worker) drops whole heaps
when they empty. The next step then page-faults all of it in again. Keeping it makes an EfficientNet
trial on 2 CPU cores 1.28x (one worker) and 1.21x (2-worker DDP) faster (benchmarks/throughput.py,
part `host_memory`); a main thread loses less, a thread more.

Two process-wide malloc settings stop it: a top pad larger than a thread heap (64 MiB), so that no
heap is dropped or trimmed, and the largest fixed mmap threshold glibc allows (32 MiB), so that
buffers up to it come from the arenas (setting any parameter turns glibc's adaptive threshold off).
The price is that the process keeps what it freed: `release_freed_host_memory` hands it back when a
trial ends (a reused trial process runs the next trial on another thread, whose arena may be another
one: without the release arenas would keep their peaks). Off with
`training.keep_host_memory: false`; nothing happens outside glibc (macOS, musl).

Sharded trials do the opposite: they exist to hold less, and a kept peak (the whole model as built
before sharding, each block's gathered parameters) would undo that on the host. They set a small fixed
mmap threshold instead, so that every large buffer is its own mapping, unmapped when freed: the
worker's resident memory follows what it holds (benchmarks/fsdp.py).
"""

from __future__ import annotations

import ctypes
import gc
import platform
import sys

import psutil

# mallopt parameters (malloc.h)
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

TOP_PAD_BYTES = 256 << 20  # above a thread heap's 64 MiB: heap_trim never drops or shrinks one
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's ceiling for this setting on 64-bit machines
SHARDED_MMAP_THRESHOLD_BYTES = 1 << 20  # tensors above a MiB map and unmap; small ones stay cheap

_applied = False


def configure_host_memory(*, keep: bool, sharded: bool) -> bool:
    """A trial process's malloc settings, before the model and the data take their memory: kept
    (`keep_freed_host_memory`) for unsharded trials that ask for it, handed back for sharded ones.
    True if freed memory is kept."""
    if sharded:
        hand_back_freed_host_memory()
        return False
    return keep and keep_freed_host_memory()


def hand_back_freed_host_memory() -> bool:
    """Give large freed buffers back to the OS at once (glibc only); True if the setting holds."""
    return _is_glibc() and _libc().mallopt(M_MMAP_THRESHOLD, SHARDED_MMAP_THRESHOLD_BYTES) == 1


def keep_freed_host_memory() -> bool:
    """Apply the settings once per process; True if they are in force (glibc only)."""
    global _applied
    if _applied:
        return True
    if not _is_glibc():
        return False
    libc = _libc()
    # Both or neither: the top pad alone would freeze the mmap threshold at its current value.
    if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
        return False
    if libc.mallopt(M_TOP_PAD, TOP_PAD_BYTES) != 1:
        return False
    _applied = True
    return True


def release_freed_host_memory() -> None:
    """At a trial's end: collect the trial's garbage and give every arena's free memory back to the
    OS (`malloc_trim(0)` ignores the top pad). With glibc's defaults too: a reused process otherwise
    grows trial by trial as each trial's thread leaves its arena fragmented."""
    gc.collect()
    if _is_glibc():
        _libc().malloc_trim(0)


def resident_gib() -> float:
    """This process's resident memory (RSS), GiB: trials record it so that a reused process's
    growth from trial to trial shows in the tables (benchmarks/trial_overhead.py reports it)."""
    return round(psutil.Process().memory_info().rss / 2**30, 3)


def _is_glibc() -> bool:
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL("libc.so.6")
