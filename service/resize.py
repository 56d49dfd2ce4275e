"""OpenCV's uint8 ``cv2.resize`` for INTER_AREA and INTER_CUBIC, in numpy, bit for bit.

The training pairs were made with OpenCV (training/prepare.py: centre square, INTER_AREA to 256², INTER_CUBIC
to 64²), and the service never imports cv2, so the fidelity guard and `xraysr shrink` redo those two resizes
here. tests/service/test_resize.py checks every function against cv2 on real X-rays and random images.

What OpenCV does for 8-bit images (modules/imgproc/src/resize.cpp), step by step:

INTER_CUBIC (``resize_cubic``), any scale, no antialiasing:
1. Source coordinate of output pixel d: ``f = (d + 0.5) * scale - 0.5`` (float32), ``s = floor(f)``, ``f -= s``.
2. Keys' cubic weights with A = -0.75 at f (float32, ``interpolateCubic``) for sources s-1 .. s+2, each turned
   into an int16 with 11 fractional bits (INTER_RESIZE_COEF_BITS): ``round(w * 2048)``, ties to even.
3. Horizontal pass, integer: ``sum(src[row, clamp(s-1+k)] * w_k)``; out-of-image sources replicate the edge.
4. Vertical pass on the int rows, as the SIMD kernel (VResizeCubicVec_32s8u) computes it: each weight becomes
   ``float32(beta_k) / 2**22``, the four terms are accumulated in float32 from the last row to the first
   (``muladd(S0, b0, muladd(S1, b1, muladd(S2, b2, S3 * b3)))``), rounded half to even and saturated to 0..255.

OpenCV builds linked with Intel IPP (the x86 pip wheels) hand the 64 -> 256 upscale to IPP, whose float
rounding differs from OpenCV's own kernel near ties: a few pixels in a million come out one grey level apart.
This module is OpenCV's own kernel, what every build without IPP (ARM, Jetson) and ``cv2.ipp.setUseIPP(False)``
compute. The 256 -> 64 downscale of the training recipe and INTER_AREA match IPP
builds too (tests/service/test_resize.py checks both, and the stored LR_64 files).

INTER_AREA (``resize_area``), downscaling:
- An integer factor k in both directions (1024 -> 256 is k = 4): the mean of each k×k block, ``sum * (1/k²)``
  in float32 rounded half to even; k = 2 uses OpenCV's SIMD kernel, ``(sum + 2) >> 2``.
- Any other factor: each output pixel averages the source pixels it covers, partial edge pixels weighted by the
  fraction covered (``computeResizeAreaTab``), accumulated in float32 in OpenCV's order.
"""

from __future__ import annotations

import numpy as np

INTER_RESIZE_COEF_BITS = 11
INTER_RESIZE_COEF_SCALE = 1 << INTER_RESIZE_COEF_BITS
CUBIC_A = np.float32(-0.75)


def _check_image(pixels: np.ndarray) -> None:
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.size == 0:
        shape, dtype = getattr(pixels, "shape", None), getattr(pixels, "dtype", type(pixels).__name__)
        raise ValueError(f"resize takes a non-empty 2-D uint8 array (H x W); got shape {shape}, dtype {dtype}")


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"the output size must be at least 1x1, got {width}x{height}")


# --- INTER_CUBIC -------------------------------------------------------------------------------------------------


def _cubic_weights(fraction: np.ndarray) -> np.ndarray:
    """interpolateCubic in float32: the four weights of sources s-1, s, s+1, s+2 at ``fraction`` in [0, 1)."""
    x = fraction.astype(np.float32)
    one = np.float32(1)
    a = CUBIC_A
    w0 = ((a * (x + one) - np.float32(5) * a) * (x + one) + np.float32(8) * a) * (x + one) - np.float32(4) * a
    w1 = ((a + np.float32(2)) * x - (a + np.float32(3))) * x * x + one
    w2 = ((a + np.float32(2)) * (one - x) - (a + np.float32(3))) * (one - x) * (one - x) + one
    w3 = one - w0 - w1 - w2
    return np.stack([w0, w1, w2, w3], axis=-1).astype(np.float32)


def _cubic_taps(source_size: int, output_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel: the four source indices (edge-replicated) and their int16 fixed-point weights."""
    scale = 1.0 / (output_size / source_size)  # OpenCV: scale_x = 1. / inv_scale_x, in double
    position = ((np.arange(output_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(position).astype(np.int64)
    fraction = (position - start.astype(np.float32)).astype(np.float32)
    weights = _cubic_weights(fraction) * np.float32(INTER_RESIZE_COEF_SCALE)
    fixed = np.clip(np.rint(weights), -32768, 32767).astype(np.int64)  # saturate_cast<short>: round half even
    indices = np.clip(start[:, None] + np.arange(-1, 3)[None, :], 0, source_size - 1)
    return indices, fixed


def resize_cubic(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv2.resize(pixels, (width, height), interpolation=cv2.INTER_CUBIC)`` for a 2-D uint8 image."""
    _check_image(pixels)
    _check_size(height, width)
    rows, cols = pixels.shape
    x_indices, x_weights = _cubic_taps(cols, width)
    y_indices, y_weights = _cubic_taps(rows, height)
    # 3. horizontal, exact in integers (255 * 2048 * 1.3 fits easily)
    source = pixels.astype(np.int64)
    horizontal = (source[:, x_indices] * x_weights[None, :, :]).sum(axis=2)  # rows x width
    # 4. vertical, in float32 as the SIMD kernel does it, last tap first
    betas = (y_weights.astype(np.float32) * np.float32(1.0 / INTER_RESIZE_COEF_SCALE**2)).astype(np.float32)
    taps = horizontal[y_indices].astype(np.float32)  # height x 4 x width
    total = taps[:, 3] * betas[:, 3:4]
    for k in (2, 1, 0):
        total = (taps[:, k] * betas[:, k : k + 1]).astype(np.float32) + total
    return np.clip(np.rint(total), 0, 255).astype(np.uint8)


def _float_cubic_taps(source_size: int, output_size: int) -> tuple[np.ndarray, np.ndarray]:
    scale = 1.0 / (output_size / source_size)
    position = ((np.arange(output_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(position).astype(np.int64)
    weights = _cubic_weights((position - start.astype(np.float32)).astype(np.float32)).astype(np.float64)
    indices = np.clip(start[:, None] + np.arange(-1, 3)[None, :], 0, source_size - 1)
    return indices, weights


def resize_cubic_float(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """INTER_CUBIC of a 2-D float image with OpenCV's float weights (edges replicated), in float64, neither
    rounded nor saturated: the linear map the fidelity guard's back-projection upsamples its residual with
    (service/consistency.py). Four-tap gathers, not matrix products: BLAS threads cost more than the arithmetic
    at this size on a busy CPU."""
    if not isinstance(values, np.ndarray) or values.ndim != 2 or values.size == 0:
        raise ValueError(f"resize_cubic_float takes a non-empty 2-D array, got shape {getattr(values, 'shape', None)}")
    _check_size(height, width)
    rows, cols = values.shape
    x_indices, x_weights = _float_cubic_taps(cols, width)
    y_indices, y_weights = _float_cubic_taps(rows, height)
    source = values.astype(np.float64)
    horizontal = (source[:, x_indices] * x_weights[None, :, :]).sum(axis=2)
    return (horizontal[y_indices] * y_weights[:, :, None]).sum(axis=1)


# --- INTER_AREA --------------------------------------------------------------------------------------------------


def resize_area(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)`` for a 2-D uint8 image, downscaling
    (each output side at most the input's). Upscaling is refused: OpenCV switches to a bilinear kernel there,
    which xraysr's recipe never uses (training/prepare.py drops images smaller than the HR size)."""
    _check_image(pixels)
    _check_size(height, width)
    rows, cols = pixels.shape
    if height > rows or width > cols:
        raise ValueError(f"resize_area only downscales: {cols}x{rows} to {width}x{height} would enlarge")
    scale_y, scale_x = rows / height, cols / width
    factor_y, factor_x = round(scale_y), round(scale_x)
    if abs(scale_x - factor_x) < np.finfo(np.float64).eps and abs(scale_y - factor_y) < np.finfo(np.float64).eps:
        return _area_integer(pixels, factor_y, factor_x, height, width)
    return _area_general(pixels, height, width)


def _area_integer(pixels: np.ndarray, factor_y: int, factor_x: int, height: int, width: int) -> np.ndarray:
    if factor_x == 1 and factor_y == 1:
        return pixels.copy()
    blocks = pixels[: height * factor_y, : width * factor_x]
    sums = blocks.reshape(height, factor_y, width, factor_x).sum(axis=(1, 3), dtype=np.int64)
    if factor_x == 2 and factor_y == 2:
        return ((sums + 2) >> 2).astype(np.uint8)  # ResizeAreaFastVec_SIMD_8u
    scale = np.float32(1.0) / np.float32(factor_x * factor_y)
    return np.clip(np.rint(sums.astype(np.float32) * scale), 0, 255).astype(np.uint8)


def _area_table(source_size: int, output_size: int) -> list[tuple[int, int, float]]:
    """computeResizeAreaTab: (output index, source index, weight) for every source pixel an output covers."""
    scale = source_size / output_size
    table: list[tuple[int, int, float]] = []
    for output in range(output_size):
        start, end = output * scale, (output + 1) * scale
        first, last = int(np.ceil(start)), int(np.floor(end))
        last = min(last, source_size - 1)
        first = min(first, source_size - 1)
        cell = min(scale, source_size - start)
        if first - start > 1e-3:
            table.append((output, first - 1, float(np.float32((first - start) / cell))))
        for source in range(first, last):
            table.append((output, source, float(np.float32(1.0 / cell))))
        if end - last > 1e-3:
            table.append((output, last, float(np.float32(min(min(end - last, 1.0), cell) / cell))))
    return table


def _area_general(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """resizeArea_ (ResizeArea_Invoker): rows weighted horizontally, then summed vertically, all in float32."""
    rows, cols = pixels.shape
    x_table = _area_table(cols, width)
    y_table = _area_table(rows, height)
    x_out = np.array([entry[0] for entry in x_table])
    x_src = np.array([entry[1] for entry in x_table])
    x_weight = np.array([entry[2] for entry in x_table], dtype=np.float32)
    # Horizontal: for each source row, buf[dx] += src[sx] * alpha, in table order (float32 per step). Column by
    # column from the uint8 image, so a 4096² input never exists as a float copy.
    horizontal = np.zeros((rows, width), dtype=np.float32)
    for index in range(len(x_table)):
        column = pixels[:, x_src[index]].astype(np.float32) * x_weight[index]
        horizontal[:, x_out[index]] = horizontal[:, x_out[index]] + column
    output = np.zeros((height, width), dtype=np.float32)
    for out_row, src_row, weight in y_table:
        output[out_row] = output[out_row] + horizontal[src_row] * np.float32(weight)
    return np.clip(np.rint(output), 0, 255).astype(np.uint8)
