"""Copy a large weight into memory backed by 2 MB transparent huge pages (Linux), so decode streams it faster.

A decode step reads every quantized weight once and is bound by memory bandwidth. On 4 KB pages the CPU's
hardware prefetchers stop at every page boundary and each page costs a TLB miss; on 2 MB pages one Xeon
core streamed the q4x8 weights of 16 copies of an 11008x4096 layer at 12-13 GB/s against 8-9 GB/s on 4 KB
pages (1 thread, CPU time, other jobs loading the machine; `benchmarks/kernels.py --copies 16` compares
the two as `q4x8@ISA` and `q4x8@ISA 4k-pages`). Most distributions set THP to `madvise`, so memory gets huge pages only when asked for: this
module maps fresh anonymous memory, aligns the tensor to 2 MB, `madvise(MADV_HUGEPAGE)`s it before the
first write (pages are faulted in huge), and copies the weight in. Elsewhere (no MADV_HUGEPAGE, other OS,
`CAMELID_HUGE_PAGES=0`) the tensor is returned as is.
"""

from __future__ import annotations

import mmap
import os

import torch

HUGE_PAGE = 2 << 20
MIN_BYTES = HUGE_PAGE  # a smaller tensor holds no whole huge page
DISABLE_ENV = "CAMELID_HUGE_PAGES"  # "0": keep weights in ordinary allocations


def enabled() -> bool:
    return hasattr(mmap, "MADV_HUGEPAGE") and os.environ.get(DISABLE_ENV, "1").lower() not in ("0", "false", "off", "no")


def huge_page_copy(t: torch.Tensor) -> torch.Tensor:
    """`t` (a CPU tensor) copied into 2 MB-aligned, huge-page-advised memory; `t` itself when that does not apply."""
    nbytes = t.numel() * t.element_size()
    if t.device.type != "cpu" or nbytes < MIN_BYTES or not enabled():
        return t
    # Private: a shared anonymous map is shmem, which follows shmem_enabled rather than the THP setting.
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # page-aligned, untouched
    raw = torch.frombuffer(region, dtype=torch.uint8)  # keeps `region` alive as long as the tensor lives
    offset = -raw.data_ptr() % HUGE_PAGE
    try:
        # Whole huge pages only: the tail stays on small pages, so no 2 MB page is faulted in for a few KB.
        region.madvise(mmap.MADV_HUGEPAGE, offset, nbytes // HUGE_PAGE * HUGE_PAGE)
    except OSError:  # THP disabled ("never") or unsupported: the copy still works on small pages
        pass
    out = raw[offset:offset + nbytes].view(t.dtype).view(t.shape)
    out.copy_(t)
    return out
