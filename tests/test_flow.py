"""Flow quantisation as denseflow's CAST does it, and the Farneback parameters of denseflow's farn."""
from fractions import Fraction

import numpy as np
import pytest

from transforms.flow import FARNEBACK, make_flow, quantize


def denseflow_cast(v, bound):
    """convertFlowToImage's CAST with double bounds: the float32 value promoted to double,
    255 * (v - L) / (H - L) in double (Python floats are IEEE doubles), cvRound half to even."""
    x, lo, hi = float(v), -float(bound), float(bound)
    if x > hi:
        return 255
    if x < lo:
        return 0
    return round(255 * (x - lo) / (hi - lo))


def exact_cast(v, bound):
    x, b = Fraction(float(v)), Fraction(bound)
    return 255 if x > b else 0 if x < -b else round(255 * (x + b) / (2 * b))


def near_half_values(bound):
    """The float32 values nearest to each v where 255 (v + b) / 2b = k + 0.5, and two ulps either side."""
    out = []
    for k in range(255):
        tie = np.float32(float(Fraction(2 * k + 1, 255) * bound - bound))
        for _ in range(2):
            tie = np.nextafter(tie, np.float32(-np.inf))
        for _ in range(5):
            out.append(tie)
            tie = np.nextafter(tie, np.float32(np.inf))
    return np.array(out, np.float32)


@pytest.mark.parametrize("bound", [20, 32])
def test_quantize_matches_denseflow_exactly_near_every_rounding_boundary(bound):
    values = np.concatenate([near_half_values(bound),
                             np.float32([0, bound, -bound, bound + 1e-5, -bound - 1e-5, 1e6, -1e6])])
    got = quantize(values.reshape(1, -1), float(bound)).ravel().tolist()
    assert got == [denseflow_cast(v, bound) for v in values]
    kept = [(q, v) for q, v in zip(got, values) if v == 0 or abs(v) > 1e-9]  # v + b drops tinier ones
    assert [q for q, _ in kept] == [exact_cast(v, bound) for _, v in kept]


def test_quantize_rounds_exact_halves_to_even_and_keeps_doubles_order():
    values = np.float32([0.3137254, -16, -8, 0, 8, 16, 1, -1e-16, np.inf, -np.inf])
    got = quantize(values.reshape(2, -1), 20.0).ravel().tolist()
    assert got == [129, 26, 76, 128, 178, 230, 134, 128, 255, 0]
    assert exact_cast(np.float32(-1e-16), 20) == 127  # denseflow's double sum loses it: 128, as we do
    assert got == [denseflow_cast(v, 20) for v in values]


def test_quantize_keeps_the_shape_of_a_strided_component():
    flow = np.zeros((4, 6, 2), np.float32)
    flow[..., 0], flow[..., 1] = 8, -8
    assert quantize(flow[..., 0], 20.0).tolist() == [[178] * 6] * 4
    assert quantize(flow[..., 1], 20.0).tolist() == [[76] * 6] * 4


def test_farneback_uses_denseflows_cuda_defaults():
    # cuda::FarnebackOpticalFlow::create(numLevels 5, pyrScale 0.5, fastPyramids false, winSize 13,
    # numIters 10, polyN 5, polySigma 1.1, flags 0), in calcOpticalFlowFarneback's argument order
    assert FARNEBACK == (0.5, 5, 13, 10, 5, 1.1, 0)
    rng = np.random.default_rng(0)
    a = (rng.random((64, 96)) * 255).astype(np.uint8)
    a = np.ascontiguousarray(np.repeat(np.repeat(a[::4, ::4], 4, 0), 4, 1))
    b = np.roll(a, 2, axis=1)
    flow = make_flow("farneback")(a, b)
    assert abs(float(np.median(flow[16:-16, 16:-16, 0])) - 2) < 0.1
    assert abs(float(np.median(flow[16:-16, 16:-16, 1]))) < 0.1
