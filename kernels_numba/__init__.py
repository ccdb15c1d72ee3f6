"""Pure numeric kernels: numpy in, numpy out; a numpy reference, a Numba CPU and a Numba-CUDA
version of each.

Numba's OpenMP threading layer shares libgomp with llama.cpp's CPU backend: once a kernel
had run, the two thread teams fought over the cores and llama.cpp decoded at half speed in
the same process (SmolLM2 on 2 cores: 30 -> 63 tok/s with the change). The ``workqueue``
layer has no such cost, but two threads must never run parallel regions at once, so every
parallel CPU kernel runs under one lock (``_device.serialized``). ``NUMBA_THREADING_LAYER``
still chooses another layer.
"""

import os

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    setattr(numba.config, "THREADING_LAYER", "workqueue")  # noqa: B010 - not in numba's stubs
