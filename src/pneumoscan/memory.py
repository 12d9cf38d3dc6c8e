"""Process memory: the glibc allocator setting that lets large image buffers be reused instead of mapped afresh."""

from __future__ import annotations

from functools import cache


@cache
def keep_large_buffers() -> bool:
    """Let this process reuse freed image-sized buffers instead of mapping fresh memory for each image.

    glibc's malloc serves blocks over its (adaptive) mmap threshold from new mappings and unmaps them
    on free, so every decode of a large radiograph page-faults its tens of megabytes of buffers in
    again: about 40% of the time of an uncompressed 2000x1700 DICOM here. A fixed threshold of 64 MiB
    (and trimming only past 256 MiB free) keeps them on the heap for the next image. Called once at
    start, before any fork; a no-op where the C library is not glibc. Returns whether it applied.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 64 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))
