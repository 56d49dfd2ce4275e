"""What every image xraysr makes says about itself: that it is synthetic, and what made it.

The PNG carries these as tEXt chunks ("Software", "Source", "Description" and "Disclaimer" are PNG's own
keywords, so image viewers show them; the xraysr-* ones are for programs), and the JSON answer as fields.
"""

from __future__ import annotations

from xraysr.service import __version__
from xraysr.service.manifest import Manifest
from xraysr.service.pipeline import UpscaleResult

DISCLAIMER = "Synthetic image made by a super-resolution model, not acquired; not for diagnosis."


def provenance(manifest: Manifest, result: UpscaleResult) -> dict[str, str]:
    """The text chunks of an answer's PNG. The estimate's carry no seed: it draws no noise, and its bytes are
    the same for every seed a client sends."""
    text = {
        "Software": f"xraysr {__version__}",
        "Source": f"{manifest.model} {manifest.version} ({manifest.precision})",
        "Description": f"4x super-resolution of a {manifest.image.lr_size}x{manifest.image.lr_size} chest X-ray: "
        f"{result.describe()}",
        "Disclaimer": DISCLAIMER,
        "xraysr-model-version": manifest.version,
        "xraysr-answer": result.answer,
        "xraysr-steps": str(result.steps),
        "xraysr-samples": str(result.samples),
    }
    if result.seed is not None:
        text["xraysr-seed"] = str(result.seed)
    return text
