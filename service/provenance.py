"""What every image xraysr makes says about itself: that it is synthetic, and what made it.

The PNG carries these as tEXt chunks ("Software", "Source", "Description" and "Disclaimer" are PNG's own
keywords, so image viewers show them; the xraysr-* ones are for programs), and the JSON answer as fields.
"""

from __future__ import annotations

from xraysr.service import __version__
from xraysr.service.manifest import Manifest
from xraysr.service.pipeline import UpscaleResult
from xraysr.service.sampler import sample_seeds

DISCLAIMER = "Synthetic image made by a super-resolution model, not acquired; not for diagnosis."


def provenance(manifest: Manifest, result: UpscaleResult) -> dict[str, str]:
    seeds = sample_seeds(result.seed, result.samples)
    if result.samples == 1:
        made_of = f"seed {seeds[0]}"
    else:
        made_of = f"mean of {result.samples} samples, seeds {seeds[0]} to {seeds[-1]}"
    return {
        "Software": f"xraysr {__version__}",
        "Source": f"{manifest.model} {manifest.version} ({manifest.precision})",
        "Description": f"4x super-resolution of a {manifest.image.lr_size}x{manifest.image.lr_size} chest X-ray: "
        f"{result.steps} DDIM steps, {made_of}",
        "Disclaimer": DISCLAIMER,
        "xraysr-model-version": manifest.version,
        "xraysr-steps": str(result.steps),
        "xraysr-samples": str(result.samples),
        "xraysr-seed": str(result.seed),
    }
