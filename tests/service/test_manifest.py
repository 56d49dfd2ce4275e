"""service/manifest.py: the engines/ contract refuses what it does not understand, with a clear message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from xraysr.service.manifest import (
    ManifestError,
    Precision,
    load_manifest,
    manifest_name,
    read_manifest,
    served_components,
    sha256_of,
    write_manifest,
)

SHIPPED = Path(__file__).resolve().parents[2] / "engines" / "cxr-default"


@pytest.fixture()
def engine_copy(tiny_engine_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_engine_dir, tmp_path / "engine"))


def _edit(model_dir: Path, change) -> None:
    path = model_dir / "manifest.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def test_a_real_export_loads_and_its_checksums_match(engine_copy: Path) -> None:
    manifest = load_manifest(engine_copy)
    for component in manifest.components.values():
        assert sha256_of(engine_copy / component.path) == component.sha256


def test_a_changed_file_is_refused_naming_it(engine_copy: Path) -> None:
    with (engine_copy / "unet.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ManifestError, match=r"unet file .*unet\.onnx has sha256 [0-9a-f]{64}, the manifest says"):
        load_manifest(engine_copy)
    read_manifest(engine_copy)  # the manifest itself is still fine


def test_a_missing_file_is_refused(engine_copy: Path) -> None:
    (engine_copy / "decoder.onnx").unlink()
    with pytest.raises(ManifestError, match="decoder file .* does not exist"):
        load_manifest(engine_copy)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw.update(format_version=2), "format_version 2; this xraysr understands 1"),
        (lambda raw: raw.update(colour="yes"), "colour: Extra inputs are not permitted"),
        (lambda raw: raw["components"].pop("unet"), r"components \['unet'\] are missing"),
        (lambda raw: raw["sampler"].update(kind="euler"), "sampler.kind"),
        (lambda raw: raw["sampler"].update(alphas_cumprod=[0.5] * 10), "alphas_cumprod has 10 entries"),
        (lambda raw: raw["sampler"].update(default_steps=99), "min_steps <= default_steps <= max_steps"),
        (lambda raw: raw["components"]["unet"].update(path="../unet.onnx"), "components.unet.path"),
        (lambda raw: raw.update(precision="int4"), "precision"),
        (lambda raw: raw["sampler"].update(default_samples=9), "sampler.default_samples: .*less than or equal to 8"),
        (lambda raw: raw["sampler"].update(default_samples=0), "sampler.default_samples: .*greater than or equal to 1"),
    ],
)
def test_a_manifest_it_does_not_understand_is_refused(engine_copy: Path, change, message: str) -> None:
    _edit(engine_copy, change)
    with pytest.raises(ManifestError, match=message):
        read_manifest(engine_copy)


def test_no_manifest_and_broken_json(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest.json in"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest(tmp_path)


def test_each_precision_has_its_manifest_file(engine_copy: Path) -> None:
    names = [manifest_name(precision) for precision in ("fp32", "fp16", "int8")]
    assert names == ["manifest.json", "manifest.json", "manifest.int8.json"]
    manifest = load_manifest(engine_copy)
    with pytest.raises(ManifestError, match="no manifest.int8.json in .*: quantize it with `xraysr quantize`"):
        read_manifest(engine_copy, "int8")
    quantized = manifest.model_copy(update={"precision": "int8"})
    assert write_manifest(quantized, engine_copy, "int8") == engine_copy / "manifest.int8.json"
    assert load_manifest(engine_copy, "int8") == quantized
    assert load_manifest(engine_copy) == manifest


def test_writing_through_a_symlinked_folder_leaves_the_original_alone(engine_copy: Path, tmp_path: Path) -> None:
    linked = tmp_path / "linked"
    linked.mkdir()
    for file in engine_copy.iterdir():
        (linked / file.name).symlink_to(file)
    original = (engine_copy / "manifest.json").read_text()
    write_manifest(read_manifest(linked).model_copy(update={"version": "edited"}), linked)
    assert (engine_copy / "manifest.json").read_text() == original
    assert read_manifest(linked).version == "edited" and not (linked / "manifest.json").is_symlink()


def test_default_samples_is_optional_and_one_when_absent(engine_copy: Path) -> None:
    _edit(engine_copy, lambda raw: raw["sampler"].pop("default_samples", None))
    assert "default_samples" not in (engine_copy / "manifest.json").read_text()
    assert read_manifest(engine_copy).sampler.default_samples == 1
    _edit(engine_copy, lambda raw: raw["sampler"].update(default_samples=8))
    assert read_manifest(engine_copy).sampler.default_samples == 8


def test_a_manifest_written_before_samples_and_final_timestep_still_loads(engine_copy: Path) -> None:
    def as_1_0_wrote_it(raw: dict) -> None:
        for key in ("default_samples", "final_timestep"):
            raw["sampler"].pop(key, None)
        raw["sampler"]["timestep_spacing"] = "trailing"

    _edit(engine_copy, as_1_0_wrote_it)
    sampler = read_manifest(engine_copy).sampler
    assert (sampler.default_samples, sampler.final_timestep, sampler.timestep_spacing) == (1, None, "trailing")


def test_the_shipped_manifests_carry_the_chosen_sampling_and_verify() -> None:
    for precision in ("fp32", "int8"):
        sampler = load_manifest(SHIPPED, precision).sampler  # checksums included
        assert (sampler.default_samples, sampler.final_timestep, sampler.timestep_spacing) == (4, 0, "floored")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_host_loop_serves_the_unet_and_the_device_loop_the_step_graph(precision: Precision) -> None:
    manifest = read_manifest(SHIPPED, precision)
    assert list(manifest.components) == ["encoder", "unet", "decoder", "unet_step"]
    assert served_components(manifest, device_loop=False) == ["encoder", "unet", "decoder"]
    assert served_components(manifest, device_loop=True) == ["encoder", "decoder", "unet_step"]


def test_a_model_without_a_step_graph_serves_its_three_components_either_way(engine_copy: Path) -> None:
    manifest = read_manifest(engine_copy)  # the tiny export without step_graph
    assert list(manifest.components) == ["encoder", "unet", "decoder"]
    for device_loop in (False, True):
        assert served_components(manifest, device_loop) == ["encoder", "unet", "decoder"]
