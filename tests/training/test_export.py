"""training/export.py: each ONNX file matches PyTorch, and the numpy + ONNX Runtime service pipeline matches
the PyTorch reference sampler for the same seed and steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from xraysr.service.manifest import load_manifest
from xraysr.service.pipeline import SRPipeline, to_model_range
from xraysr.service.runtimes import load_runtime
from xraysr.service.sampler import initial_noise
from xraysr.training.data import PairDataset, to_uint8
from xraysr.training.diffusion import super_resolve
from xraysr.training.export import _Decoder
from xraysr.training.metrics import psnr
from xraysr.training.pipeline import TorchPipeline


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path) -> TorchPipeline:
    return TorchPipeline.from_checkpoint(tiny_checkpoint)


def _onnx(engine_dir: Path, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(engine_dir / f"{name}.onnx"), providers=["CPUExecutionProvider"])


def test_each_component_matches_pytorch(tiny_engine_dir: Path, reference: TorchPipeline) -> None:
    generator = torch.Generator().manual_seed(0)
    lr_image = torch.rand(2, 1, 64, 64, generator=generator) * 2 - 1  # batch 2: the batch axis is dynamic
    latent = torch.randn(2, 16, 64, 64, generator=generator)
    timestep = torch.tensor([999.0, 17.0])
    cases = {
        "encoder": (reference.condition_encoder, {"lr_image": lr_image}),
        "unet": (reference.unet, {"noisy_latent": latent, "timestep": timestep, "lr_latent": latent.flip(0)}),
        "decoder": (_Decoder(reference.vae), {"hr_latent": latent.clamp(-1, 1)}),
    }
    for name, (module, inputs) in cases.items():
        with torch.no_grad():
            expected = module(*inputs.values()).numpy()
        (actual,) = _onnx(tiny_engine_dir, name).run(None, {k: v.numpy() for k, v in inputs.items()})
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4, err_msg=name)


def test_service_pipeline_matches_the_pytorch_reference_sampler(
    tiny_engine_dir: Path, reference: TorchPipeline, tiny_cxr_root: Path
) -> None:
    manifest = load_manifest(tiny_engine_dir)
    service = SRPipeline(manifest, load_runtime("onnxruntime", manifest, tiny_engine_dir))
    lr_u8 = to_uint8(PairDataset(reference.config.data, "val")[0][0])[0].numpy()
    for steps, seed in ((4, 7), (25, 123)):
        served = service.upscale(lr_u8, steps=steps, seed=seed)
        noise = torch.from_numpy(initial_noise((1, 16, 64, 64), seed))
        lr = torch.from_numpy(to_model_range(lr_u8))[None, None]
        expected = to_uint8(reference(lr, steps, torch.Generator(), initial_noise=noise))[0, 0].numpy()
        assert served.image.shape == (256, 256) and served.image.dtype == np.uint8
        assert psnr(served.image, expected) >= 40.0
        assert set(served.stage_seconds) == {"encode", "denoise", "vae_decode"}
    other_seed = service.upscale(lr_u8, steps=4, seed=8).image
    assert not np.array_equal(other_seed, service.upscale(lr_u8, steps=4, seed=7).image)


def test_a_floored_export_serves_what_the_pytorch_sampler_makes(
    tiny_checkpoint: Path, reference: TorchPipeline, tiny_cxr_root: Path, tmp_path: Path
) -> None:
    from xraysr.training.export import export_model

    manifest = export_model(tiny_checkpoint, tmp_path, "tiny", steps=(2, 4, 50), default_samples=3, final_timestep=400)
    assert (manifest.sampler.final_timestep, manifest.sampler.default_samples) == (400, 3)
    assert manifest.sampler.timestep_spacing == "floored"
    assert load_manifest(tmp_path).sampler.final_timestep == 400
    service = SRPipeline(manifest, load_runtime("onnxruntime", manifest, tmp_path))
    lr_u8 = to_uint8(PairDataset(reference.config.data, "val")[0][0])[0].numpy()
    floored = reference.config.diffusion.model_copy(update={"final_timestep": 400})
    lr = torch.from_numpy(to_model_range(lr_u8))[None, None]
    for steps in (4, 30):
        noise = torch.from_numpy(initial_noise((1, 16, 64, 64), 5))
        expected = super_resolve(reference.unet, reference.condition_encoder, reference.vae, lr, floored,
                                 reference.target_scale, steps, torch.Generator(), initial_noise=noise)
        assert psnr(service.upscale(lr_u8, steps=steps, seed=5).image, to_uint8(expected)[0, 0].numpy()) >= 40.0


def test_manifest_describes_the_export(tiny_engine_dir: Path, reference: TorchPipeline) -> None:
    manifest = load_manifest(tiny_engine_dir)
    assert manifest.model == "tiny" and manifest.version == "tiny-test" and manifest.precision == "fp32"
    assert [spec.name for spec in manifest.components["unet"].inputs] == ["noisy_latent", "timestep", "lr_latent"]
    assert manifest.components["encoder"].inputs[0].shape == ("batch", 1, 64, 64)
    assert manifest.components["decoder"].outputs[0].shape == ("batch", 1, 256, 256)
    assert manifest.latent.target_scale == pytest.approx(reference.target_scale)
    assert manifest.sampler.prediction_type == "v_prediction"
    assert (manifest.sampler.min_steps, manifest.sampler.default_steps, manifest.sampler.max_steps) == (2, 4, 50)
    assert manifest.sampler.alphas_cumprod[0] == pytest.approx(1 - 1e-4)
    assert (manifest.sampler.final_timestep, manifest.sampler.default_samples) == (None, 1)


def test_evaluate_served_scores_the_engines_through_a_real_server(
    tiny_engine_dir: Path, tiny_cxr_root: Path, tmp_path: Path
) -> None:
    from xraysr.training.evaluate_served import evaluate_served

    report = evaluate_served(tiny_engine_dir.parent, tiny_engine_dir.name, tiny_cxr_root, "test", tmp_path,
                             steps=2, seed=0)
    assert report["settings"]["images"] == 2 and report["settings"]["model_version"] == "tiny-test"
    assert report["settings"]["degradation"] == "cubic" and report["settings"]["samples"] == 1
    summary = report["summary"]["all"]
    dataset_bicubic = [r["psnr_bicubic"] for r in report["per_image"]]
    assert summary["bicubic"]["psnr"]["mean"] == pytest.approx(np.mean(dataset_bicubic))
    wins = np.mean([r["psnr_model"] > r["psnr_bicubic"] for r in report["per_image"]])
    assert summary["vs_bicubic"]["wins_psnr"] == pytest.approx(wins)
    assert summary["spearman_uncertainty"] is None  # one sample has no uncertainty map
    assert all(r["stage_ms"]["denoise"] > 0 for r in report["per_image"])
    assert (tmp_path / "served_report.json").is_file()
    assert "| all | 2 |" in (tmp_path / "served_report.md").read_text()

    # An antialiased LR is made from HR and is scored against the baselines made from that same LR.
    area = evaluate_served(tiny_engine_dir.parent, tiny_engine_dir.name, tiny_cxr_root, "test", tmp_path / "area",
                           steps=2, seed=0, samples=2, degradation="area", limit=1)
    assert area["settings"]["degradation"] == "area" and area["settings"]["samples"] == 2
    assert area["summary"]["all"]["images"] == 1
    assert area["per_image"][0]["psnr_bicubic"] != report["per_image"][0]["psnr_bicubic"]
    assert area["per_image"][0]["spearman_uncertainty"] is not None
    with pytest.raises(ValueError, match="no 'test' images"):
        evaluate_served(tiny_engine_dir.parent, tiny_engine_dir.name, tiny_cxr_root, "test", tmp_path / "none",
                        steps=2, seed=0, sources=["pediatric"])

    # No steps or samples: the model's default answer, the estimate; --shift scores on shifted films.
    default = evaluate_served(tiny_engine_dir.parent, tiny_engine_dir.name, tiny_cxr_root, "test",
                              tmp_path / "default", steps=None, seed=0, shift=True)
    assert (default["settings"]["answer"], default["settings"]["steps"], default["settings"]["samples"]) == (
        "estimate", 1, 0
    )
    assert default["settings"]["shift"]
    assert "the one-pass estimate" in (tmp_path / "default" / "served_report.md").read_text()
    assert [r["psnr_bicubic"] for r in default["per_image"]] != dataset_bicubic  # scored against the shifted films


def test_a_shifted_film_is_reproducible_and_beyond_the_trained_ranges() -> None:
    from xraysr.training.config import AcquisitionConfig
    from xraysr.training.evaluate_served import SHIFT, shifted_film

    hr = np.add.outer(np.arange(256), np.arange(256)).astype(np.uint8)
    films = [shifted_film(hr, seed=0, index=index) for index in range(8)]
    assert all(np.array_equal(film, shifted_film(hr, 0, index)[0]) for index, (film, _) in enumerate(films))
    assert any(not np.array_equal(film, hr) for film, _ in films)
    assert any(applied != films[0][1] for _, applied in films)
    trained = AcquisitionConfig()  # the ranges configs/sr_v3.yaml trains on
    assert SHIFT.unsharp_amount.low >= trained.unsharp_amount.high
    assert SHIFT.noise_sigma.low >= trained.noise_sigma.high
    assert SHIFT.jpeg_quality.high <= trained.jpeg_quality.low
    assert SHIFT.resolution_size.high <= trained.resolution_size.low
    assert SHIFT.local_contrast_gain.low >= trained.local_contrast_gain.high
    assert SHIFT.tone_gamma.low >= trained.tone_gamma.high
