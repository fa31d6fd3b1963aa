"""Peak memory of a callable.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory
allocated before the call.

CPU (documented method): PyTorch has no CPU peak counter, so the call runs under
``torch.profiler`` with ``profile_memory=True`` and the allocator's event timeline (every tensor
allocation and free, with its size) is replayed; the peak of live bytes created during the call is
returned. Tensors that existed before the call are not counted; memory allocated outside PyTorch's
allocator (e.g. by numpy) is not seen.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def peak_memory_bytes(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Run ``fn()`` once and return the peak bytes it allocated on ``device`` beyond the start."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    return _cpu_peak_bytes(fn)


def _cpu_peak_bytes(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action, MemoryProfile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        fn()
    timeline = MemoryProfile(prof.profiler.kineto_results).timeline
    live = peak = 0
    for _t, action, _key, size in timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return int(peak)
