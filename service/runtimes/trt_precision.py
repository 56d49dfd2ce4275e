"""Which layers of a parsed TensorRT network must stay FP32 in an FP16 or INT8 build, and pinning them there.

Two parts of this model lose real accuracy in half precision, and neither costs anything to keep in FP32:

1. The sinusoidal time embedding (training/unet_lite.py ``timestep_embedding``): the angles ``t · freq`` reach
   ~999 rad, where FP16's spacing is 0.5 rad, so sin/cos of an FP16 angle is noise at large t (diffusers
   computes this embedding in float32 for the same reason). Everything computed from the ``timestep`` input
   and constants alone (the angles, sin/cos, the time MLP and each block's time projection, all on (batch,
   128)-sized vectors) is pinned; the first layer that mixes it into a feature map is not.
2. The step graph's DDIM update (training/export.py ``_UNetStep``): it divides by sqrt(alpha_t), which is
   ~0.07 at t = 999, and subtracts nearly equal terms. Every layer fed (directly or not) by ``alpha_t`` or
   ``alpha_prev`` is pinned: that is the update and nothing of the UNet, which never sees the alphas.

The walk uses only INetworkDefinition's layer and tensor API, the same in TensorRT 8.6 and 10.x.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

TIME_INPUTS = frozenset({"timestep"})
SCHEDULE_INPUTS = frozenset({"alpha_t", "alpha_prev"})
# No arithmetic of their own to pin: weights, shape arithmetic, the Q/DQ pair (INT8 by definition), casts.
_NOT_PINNED = ("CONSTANT", "SHAPE", "QUANTIZE", "DEQUANTIZE", "CAST")


@dataclass
class PinnedLayers:
    time_embedding: list[str] = field(default_factory=list)
    ddim_update: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.time_embedding) + len(self.ddim_update)


def _inputs(layer: Any) -> list[str]:
    return [tensor.name for tensor in (layer.get_input(index) for index in range(layer.num_inputs)) if tensor]


def _outputs(layer: Any) -> list[Any]:
    return [layer.get_output(index) for index in range(layer.num_outputs)]


def find_fp32_layers(trt: Any, network: Any) -> tuple[PinnedLayers, list[Any]]:
    """The layers to pin (by part, and as layer objects), from the network's inputs forward in layer order."""
    # "const": computed from weights alone; "time": from the timestep and constants; "other": anything else.
    kind: dict[str, str] = {}
    from_schedule: set[str] = set()
    for index in range(network.num_inputs):
        name = network.get_input(index).name
        kind[name] = "time" if name in TIME_INPUTS else "other"
        if name in SCHEDULE_INPUTS:
            from_schedule.add(name)
    skipped = {getattr(trt.LayerType, name) for name in _NOT_PINNED if hasattr(trt.LayerType, name)}
    floats = {trt.float32, trt.float16}
    pinned, layers = PinnedLayers(), []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        names = _inputs(layer)
        kinds = {kind.get(name, "other") for name in names}
        out_kind = "const" if kinds <= {"const"} else "time" if kinds <= {"const", "time"} else "other"
        schedule_fed = any(name in from_schedule for name in names)
        outputs = _outputs(layer)
        for tensor in outputs:
            kind[tensor.name] = out_kind
            if schedule_fed:
                from_schedule.add(tensor.name)
        if layer.type in skipped or not all(tensor.dtype in floats for tensor in outputs):
            continue
        if schedule_fed:
            pinned.ddim_update.append(layer.name)
            layers.append(layer)
        elif out_kind == "time":
            pinned.time_embedding.append(layer.name)
            layers.append(layer)
    return pinned, layers


def pin_fp32_layers(trt: Any, network: Any) -> PinnedLayers:
    """Sets FP32 as the precision and output type of the time-embedding and DDIM-update layers.

    The builder honours these only with ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS``, which the caller sets.
    """
    pinned, layers = find_fp32_layers(trt, network)
    for layer in layers:
        layer.precision = trt.float32
        for index in range(layer.num_outputs):
            layer.set_output_type(index, trt.float32)
    return pinned
