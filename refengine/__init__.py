import os

# Two thread pools share the cores: OpenBLAS's (numpy's products) and the numba backend's OpenMP team. Each
# spins after its work, OpenBLAS's for ~0.1 s, waiting for more, and holds a core the other one needs: decode
# steps right after a prompt's BLAS products measured 2x slower for 0.1 s, and BLAS products interleaved with
# numba kernels (int8 weights unpacked for BLAS) 10x slower. So both go to sleep at once instead; a wake-up
# costs the next call ~10 us. Set before numpy and numba load their thread pools; the environment wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
os.environ.setdefault("GOMP_SPINCOUNT", "3000")
