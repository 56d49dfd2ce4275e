"""The degradations: the numpy form (evaluation) and the torch form (training) make the same LR images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import SHARED_DATA
from xraysr.training.config import AugmentConfig
from xraysr.training.degradation import DEGRADATIONS, degrade, degrade_mixed, draw_degradations, make_lr


def real_hr_images(count: int = 6) -> list[np.ndarray]:
    folder = SHARED_DATA / "nih_starter" / "HR_256"
    if not folder.is_dir():
        pytest.skip(f"needs ../shared/data: the NIH starter set (not found at {folder})")
    return [np.asarray(Image.open(path)) for path in sorted(folder.glob("*.png"))[:count]]


def to_torch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32) / 127.5 - 1.0)[None, None]


def to_pixels(image: torch.Tensor) -> np.ndarray:
    return ((image[0, 0] + 1) * 127.5).round().numpy().astype(np.uint8)


def test_cubic_is_the_shared_datas_lr() -> None:
    real_hr_images(1)  # skips without the shared data
    folder = SHARED_DATA / "nih_starter"
    for path in sorted((folder / "HR_256").glob("*.png"))[:4]:
        expected = np.asarray(Image.open(folder / "LR_64" / path.name))
        np.testing.assert_array_equal(make_lr(np.asarray(Image.open(path)), 64, "cubic"), expected)


@pytest.mark.parametrize(("degradation", "max_difference", "max_mean_difference"), [
    ("cubic", 1, 0.05), ("area", 1, 0.05), ("cubic_aa", 8, 0.25),
])
def test_torch_form_matches_the_numpy_form(degradation: str, max_difference: int, max_mean_difference: float) -> None:
    # cubic_aa: Pillow rounds to 8 bits between its two separable passes, torch does not.
    for hr in real_hr_images():
        expected = make_lr(hr, 64, degradation).astype(int)  # type: ignore[arg-type]
        got = to_pixels(degrade(to_torch(hr), 64, degradation)).astype(int)  # type: ignore[arg-type]
        difference = np.abs(got - expected)
        assert difference.max() <= max_difference and difference.mean() <= max_mean_difference


def test_the_degradations_differ_and_area_is_the_block_mean() -> None:
    hr = real_hr_images(1)[0]
    made = {name: make_lr(hr, 64, name).astype(int) for name in DEGRADATIONS}
    block_mean = hr.reshape(64, 4, 64, 4).mean(axis=(1, 3))
    assert np.abs(made["area"] - block_mean).max() <= 0.5 + 1e-9
    assert np.abs(made["cubic"] - made["area"]).mean() > 0.5  # aliasing: not the block mean
    assert np.abs(made["cubic_aa"] - made["area"]).mean() < np.abs(made["cubic"] - made["area"]).mean()


def test_make_lr_refuses_what_it_cannot_degrade() -> None:
    with pytest.raises(ValueError, match="square"):
        make_lr(np.zeros((256, 200), np.uint8), 64, "cubic")
    with pytest.raises(ValueError, match="unknown degradation"):
        make_lr(np.zeros((256, 256), np.uint8), 64, "nearest")  # type: ignore[arg-type]


def test_degrade_mixed_applies_each_samples_own_degradation() -> None:
    images = real_hr_images(3)
    batch = torch.cat([to_torch(image) for image in images])
    kinds = ["area", "cubic", "cubic_aa"]
    mixed = degrade_mixed(batch, 64, kinds)  # type: ignore[arg-type]
    for index, kind in enumerate(kinds):
        torch.testing.assert_close(mixed[index : index + 1], degrade(batch[index : index + 1], 64, kind))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 degradations for a batch of 3"):
        degrade_mixed(batch, 64, ["area", "cubic"])


def test_draw_degradations_follows_the_weights_and_the_generator() -> None:
    weights = {"cubic": 0.5, "area": 0.3, "cubic_aa": 0.2}
    drawn = draw_degradations(20_000, weights, torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    shares = {name: drawn.count(name) / len(drawn) for name in weights}
    assert shares == pytest.approx(weights, abs=0.02)
    again = draw_degradations(50, weights, torch.Generator().manual_seed(1))  # type: ignore[arg-type]
    assert again == draw_degradations(50, weights, torch.Generator().manual_seed(1))  # type: ignore[arg-type]
    assert draw_degradations(5, {"area": 1.0, "cubic": 0.0}, torch.Generator()) == ["area"] * 5
    with pytest.raises(ValueError, match="positive weight"):
        draw_degradations(5, {"area": 0.0}, torch.Generator())


def test_augment_config_validates_the_degradation_mix() -> None:
    assert AugmentConfig().degradations == {"cubic": 1.0}
    assert AugmentConfig(degradations={"cubic": 1, "area": 1}).degradations["area"] == 1.0
    for bad in ({"cubic": -1.0, "area": 2.0}, {"cubic": 0.0}, {"bilinear": 1.0}):
        with pytest.raises(ValueError):
            AugmentConfig(degradations=bad)
    with pytest.raises(ValueError, match="degrade_augmented_hr"):
        AugmentConfig(lr_source="augment_lr", degradations={"area": 1.0})

