"""Where numba keeps the backend's compiled kernels (cache=True): a folder named by a hash of every kernel
source file, so that only a first start after a change compiles them.

numba checks a cached function against the source of its own file only, and the decode step (numba_decode)
compiles in code from numba_kernels and numba_matmul's intrinsics: after an edit there, numba's default
folder would go on serving the old machine code. A folder per version of all of them cannot go stale.
NUMBA_CACHE_DIR, when set, wins.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numba

KERNEL_FILES = ("numba_cache.py", "numba_kernels.py", "numba_matmul.py", "numba_decode.py")


@functools.cache
def use_kernel_cache() -> None:
    """Point numba's cache at this version's folder; a kernel module calls it before its first @njit(cache=True)
    (numba picks the folder when it decorates). The sources are read and hashed once per process."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    here = Path(__file__).parent
    digest = hashlib.sha256(b"".join((here / name).read_bytes() for name in KERNEL_FILES)).hexdigest()[:16]
    numba.config.CACHE_DIR = str(here / "__pycache__" / f"kernels-{digest}")
