"""Time every kernel's CPU and CUDA versions on the same data: `python -m kernels_numba.timing`.

CUDA figures are given twice: the kernel alone on device-resident arrays, and end to end
through the host wrappers (transfers included), which is what a caller holding numpy
arrays pays. Prints one JSON object.
"""

from __future__ import annotations

import json
import time

import numpy as np
from numba import cuda

from kernels_numba import fhrr, quant


def _best(fn, reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _cuda_kernel_time(launch, reps: int = 10) -> float:
    launch()
    cuda.synchronize()
    start, end = cuda.event(), cuda.event()
    start.record()
    for _ in range(reps):
        launch()
    end.record()
    end.synchronize()
    return cuda.event_elapsed_time(start, end) / 1000 / reps


def main() -> None:
    rng = np.random.default_rng(0)
    rows, cols, bits, group = 8192, 1024, 4, 64  # 8M values: a big block batch
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    lo, hi = quant.group_minmax_cpu(x, group)
    scale = ((hi - lo) / 15).astype(np.float32)
    packed = quant.encode_cpu(x, lo, scale, bits, group)
    f16_bytes = x.size * 2
    out: dict = {"values": int(x.size), "gpu": cuda.is_available()}
    out["memcpy_gbs"] = f16_bytes / _best(lambda: x.astype(np.float16).copy()) / 1e9
    out["cpu"] = {
        "encode_gbs": f16_bytes / _best(lambda: quant.encode_cpu(x, lo, scale, bits, group)) / 1e9,
        "decode_gbs": f16_bytes / _best(lambda: quant.decode_cpu(packed, lo, scale, bits, group, cols)) / 1e9,
    }
    blocks = rng.integers(0, 49152, 256).astype(np.int64)
    w = np.ones(256, np.float32)
    out["cpu"]["sketch_ms"] = _best(lambda: fhrr.sketch_cpu(blocks, w, 1024, 1)) * 1000
    m = rng.standard_normal((8000, 2048)).astype(np.float32)
    q = m[0].copy()
    out["cpu"]["score_8000_ms"] = _best(lambda: fhrr.score_ref(m, q)) * 1000
    if cuda.is_available():
        dx, dlo, dsc, dpk = (cuda.to_device(a) for a in (x, lo, scale, packed))
        dout8 = cuda.device_array(packed.shape, np.uint8)
        doutf = cuda.device_array((rows, cols), np.float32)
        g_enc = ((rows + 3) // 4, (packed.shape[1] + 63) // 64)
        g_dec = ((rows + 3) // 4, (cols + 63) // 64)
        enc_k = _cuda_kernel_time(lambda: quant._encode_kernel[g_enc, (4, 64)](dx, dlo, dsc, bits, group, dout8))
        dec_k = _cuda_kernel_time(lambda: quant._decode_kernel[g_dec, (4, 64)](dpk, dlo, dsc, bits, group, doutf))
        assert np.array_equal(
            quant.decode_cuda(packed, lo, scale, bits, group, cols),
            quant.decode_cpu(packed, lo, scale, bits, group, cols),
        )
        assert np.array_equal(quant.encode_cuda(x, lo, scale, bits, group), packed)
        dm, dq, ds = cuda.to_device(m), cuda.to_device(q), cuda.device_array(8000, np.float32)
        score_k = _cuda_kernel_time(lambda: fhrr._score_kernel[(8000 + 127) // 128, 128](dm, dq, ds))
        db, dw = cuda.to_device(blocks), cuda.to_device(w)
        dre, dim_ = cuda.device_array(1024, np.float64), cuda.device_array(1024, np.float64)
        sketch_k = _cuda_kernel_time(lambda: fhrr._sketch_kernel[8, 128](db, dw, 1024, 1, dre, dim_))
        out["cuda"] = {
            "encode_kernel_gbs": f16_bytes / enc_k / 1e9,
            "decode_kernel_gbs": f16_bytes / dec_k / 1e9,
            "encode_e2e_gbs": f16_bytes / _best(lambda: quant.encode_cuda(x, lo, scale, bits, group)) / 1e9,
            "decode_e2e_gbs": f16_bytes / _best(lambda: quant.decode_cuda(packed, lo, scale, bits, group, cols)) / 1e9,
            "score_8000_kernel_ms": score_k * 1000,
            "sketch_kernel_ms": sketch_k * 1000,
            "device": cuda.get_current_device().name.decode()
            if isinstance(cuda.get_current_device().name, bytes)
            else str(cuda.get_current_device().name),
        }
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}, default=str))


if __name__ == "__main__":
    main()
