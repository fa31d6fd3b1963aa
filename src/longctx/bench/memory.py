"""Peak memory of a callable.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory
allocated before the call.

CPU (documented method): PyTorch has no CPU peak counter, so the call runs under
``torch.profiler`` with ``profile_memory=True``, which records every allocation and free of
PyTorch's CPU allocator as a ``[memory]`` event with a signed byte count. Replaying those events in
time order gives the live bytes at every moment; the peak is returned. Tensors that existed before
the call are not counted (their frees are, so the result is the peak *increase*, floored at 0);
memory allocated outside PyTorch's allocator (e.g. by numpy) is not seen. The profiler slows the
call down, so this is a separate pass from the timing.
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

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()  # > 0 allocation, < 0 free
        peak = max(peak, live)
    return int(peak)
