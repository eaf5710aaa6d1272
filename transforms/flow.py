"""Optical flow between consecutive grey frames, stored as denseflow does.

Each component is quantised with bound b: v > b -> 255, v < -b -> 0, else
round(255 (v + b) / 2b), in double precision and rounding half to even as denseflow's
cvRound does, and written as a single-channel JPEG (quality 95):
flow_x_00001.jpg / flow_y_00001.jpg ..., N - 1 pairs for N frames.
"""
import dataclasses
import os

import apache_beam as beam
import av
import cv2
import numpy as np

from transforms.layout import FLOW_PREFIXES, frame_name
from transforms.optionfields import Refused, option
from transforms.video import Decimate, Scaler, planes

ALGORITHMS = ("tvl1", "tvl1-fast", "farneback", "dis")
FARNEBACK = (0.5, 5, 13, 10, 5, 1.1, 0)  # denseflow's farn: cuda::FarnebackOpticalFlow::create() defaults


def resource_hints(value, _=None):
    """--flow-resource-hint KEY=VALUE flags (a list) or a YAML mapping, as Beam takes them: sorted
    (key, value) pairs; refused unless Beam knows them."""
    pairs = value.items() if isinstance(value, dict) else (v.partition("=")[::2] for v in value)
    hints = {k.strip(): str(v).strip() for k, v in pairs}
    try:
        beam.Map(lambda x: x).with_resource_hints(**hints)
    except (ValueError, TypeError) as e:
        raise Refused(f"--flow-resource-hint: {e}") from None
    return tuple(sorted(hints.items()))


@dataclasses.dataclass(frozen=True)
class FlowOptions:
    """The flow group: the algorithm, the quantisation bound and the flow stage's Beam resource hints."""
    flow_algorithm: str = option("tvl1", "optical flow: tvl1 (OpenCV DualTVL1 defaults, denseflow-compatible), "
                                         "tvl1-fast (epsilon 0.03), farneback, dis (DIS, fast preset)",
                                 choices=ALGORITHMS, shapes=("flow",))
    flow_bound: float = option(20.0, "flow quantisation bound (denseflow -b)", shapes=("flow",),
                               refuse=(lambda v: v <= 0, "--scale must be >= 2 and --flow-bound > 0"))
    flow_resource_hints: tuple = option({}, "Beam resource hint KEY=VALUE for the flow stage alone (min_ram, "
                                            "cpu_count, accelerator); repeatable",
                                        name="flow_resource_hint", convert=resource_hints)


def make_flow(algorithm):
    """A function (prev_grey, next_grey) -> float32 HxWx2 flow."""
    if algorithm in ("tvl1", "tvl1-fast"):
        tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()  # denseflow's defaults
        if algorithm == "tvl1-fast":
            tvl1.setEpsilon(0.03)
        return lambda a, b: tvl1.calc(a, b, None)
    if algorithm == "farneback":
        return lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, *FARNEBACK)
    if algorithm == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        return lambda a, b: dis.calc(a, b, None)
    raise ValueError(f"unknown flow algorithm {algorithm!r} (choose from {', '.join(ALGORITHMS)})")


def quantize(component, bound):
    """denseflow's CAST of one flow component to uint8: 255 (v + b) / 2b in double, in its order of
    operations, rounded half to even, saturated; NaN gives 0 as cvRound's INT_MIN does."""
    v = np.add(component, bound, dtype=np.float64)
    v *= 255
    v /= 2 * bound
    np.fmax(v, 0, out=v)
    np.fmin(v, 255, out=v)
    return np.rint(v, out=v).astype(np.uint8)


def grey_frames(path, size, remove_dup=False):
    """Decode `path` and yield its frames as grey uint8 images of `size` (display orientation)."""
    decimate = Decimate() if remove_dup else None
    scaler = None
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for frame in container.decode(stream):
            if decimate is not None and not decimate.keep(*planes(frame, frame.rotation or 0)):
                continue
            scaler = scaler or Scaler(*size, frame.rotation or 0)
            yield cv2.cvtColor(scaler.bgr(frame), cv2.COLOR_BGR2GRAY)


def write_flow(frames, folder, *, algorithm="tvl1", bound=20.0, index_base=1, quality=95):
    """Flow between consecutive frames of the iterable `frames` into folder; (pairs, bytes)."""
    os.makedirs(folder, exist_ok=True)
    flow = make_flow(algorithm)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    prev, pairs, written = None, 0, 0
    for grey in frames:
        if prev is not None:
            f = flow(prev, grey)
            for axis, prefix in enumerate(FLOW_PREFIXES):
                ok, data = cv2.imencode(".jpg", quantize(f[..., axis], bound), params)
                with open(os.path.join(folder, frame_name(prefix, pairs + index_base)), "wb") as out:
                    out.write(data)
                written += len(data)
            pairs += 1
        prev = grey
    return pairs, written
