"""The real re-exported model: the step-graph loop (what TensorRT's device loop runs) vs the host loop, FP32 and INT8.

usage (from the repository root): python docs/scripts/step_loop_vs_host_loop.py engines/cxr-default fp32 int8
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from xraysr.service.manifest import load_manifest
from xraysr.service.pipeline import SRPipeline
from xraysr.service.runtimes.onnxruntime import OnnxRuntime, create_session


class StepLoop(OnnxRuntime):
    """ONNX Runtime looping over unet_step, as TensorRT's device loop does (OnnxRuntime itself never loads it)."""

    def __init__(self, manifest, model_dir, threads):
        super().__init__(manifest, model_dir, threads)
        path = Path(model_dir) / manifest.components["unet_step"].path
        self._sessions["unet_step"] = create_session(path)
        self._output_names["unet_step"] = manifest.components["unet_step"].outputs[0].name

    def denoise(self, sample, lr_latent, timesteps, alphas):
        for timestep, (alpha_t, alpha_prev) in zip(timesteps, alphas, strict=True):
            batch = sample.shape[0]
            sample = self.run("unet_step", {"sample": sample, "timestep": np.full((batch,), timestep, np.float32),
                "lr_latent": lr_latent, "alpha_t": np.full((batch,), alpha_t, np.float32),
                "alpha_prev": np.full((batch,), alpha_prev, np.float32)})
        return sample

engines = Path(sys.argv[1])
lr = np.array(Image.open("runs/data/all/LR_64/nih_00001734_0.png"))
for precision in sys.argv[2:]:
    manifest = load_manifest(engines, precision)
    host = SRPipeline(manifest, OnnxRuntime(manifest, engines, threads=2)).upscale(lr, 25, 0, samples=4).image
    loop = SRPipeline(manifest, StepLoop(manifest, engines, threads=2)).upscale(lr, 25, 0, samples=4).image
    diff = np.abs(host.astype(int) - loop.astype(int))
    print(precision, "max grey-level diff", diff.max(), "pixels differing", int((diff > 0).sum()))
