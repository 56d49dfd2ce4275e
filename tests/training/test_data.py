"""training/data.py on real chest X-rays from the shared development set, linked into a tmp root."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests import xrays
from xraysr.training.config import AugmentConfig, DataConfig
from xraysr.training.data import (
    AugmentParameters,
    PairDataset,
    apply_augmentation,
    augment_pair,
    augmentation_generator,
    batch_at_step,
    draw_augmentation,
    to_uint8,
    to_unit_range,
)
from xraysr.training.splits import SplitRow, read_splits

CXR = xrays.XRAYS  # the suite's own X-ray pairs, laid out as `xraysr prepare` writes them
SPLIT_OF = ["train"] * 5 + ["val"] * 2 + ["test"]


def _pair_names(count: int) -> list[str]:
    return xrays.pair_names()[:count]


def _write_splits(root: Path, rows: list[tuple[str, str]]) -> None:
    with (root / "splits.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "patient_id", "view", "split"])
        writer.writerows([name, f"patient{i}", "PA", split] for i, (name, split) in enumerate(rows))


def _link(root: Path, folder: str, name: str, target: Path) -> None:
    (root / folder).mkdir(exist_ok=True)
    (root / folder / name).symlink_to(target)


def _decode(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path)))


@pytest.fixture(scope="module")
def cxr_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    names = _pair_names(len(SPLIT_OF))
    root = tmp_path_factory.mktemp("cxr")
    for name in names:
        _link(root, "HR_256", name, CXR / "HR_256" / name)
        _link(root, "LR_64", name, CXR / "LR_64" / name)
    _write_splits(root, list(zip(names, SPLIT_OF, strict=True)))
    return root


@pytest.fixture(scope="module")
def train_set(cxr_root: Path) -> PairDataset:
    return PairDataset(DataConfig(root=cxr_root), "train")


def test_read_splits_keeps_rows_in_file_order(cxr_root: Path) -> None:
    rows = read_splits(cxr_root)
    assert [row.split for row in rows] == SPLIT_OF
    assert rows[0] == SplitRow(rows[0].filename, "patient0", "PA", "train")


def test_dataset_loads_split_as_unit_range_float(cxr_root: Path, train_set: PairDataset) -> None:
    assert len(train_set) == 5
    assert len(PairDataset(DataConfig(root=cxr_root), "val")) == 2
    assert train_set.filenames == [row.filename for row in read_splits(cxr_root)[:5]]
    lr, hr = train_set[0]
    assert (lr.shape, hr.shape) == ((1, 64, 64), (1, 256, 256))
    assert lr.dtype == hr.dtype == torch.float32
    for image in (lr, hr):
        assert image.min() >= -1 and image.max() <= 1


def test_to_uint8_returns_the_png_bytes_exactly(cxr_root: Path, train_set: PairDataset) -> None:
    for index, name in enumerate(train_set.filenames):
        lr, hr = train_set[index]
        assert torch.equal(to_uint8(hr)[0], _decode(cxr_root / "HR_256" / name))
        assert torch.equal(to_uint8(lr)[0], _decode(cxr_root / "LR_64" / name))


def test_unit_range_conversions_are_exact_at_every_level() -> None:
    levels = torch.arange(256, dtype=torch.uint8)
    unit = to_unit_range(levels)
    assert unit[0].item() == -1.0 and unit[255].item() == 1.0
    assert torch.equal(to_uint8(unit), levels)
    # Out-of-range values clamp; 0.0 sits at 127.5 and rounds half to even.
    assert to_uint8(torch.tensor([-3.0, 0.0, 2.0])).tolist() == [0, 128, 255]


def _alignment_error(lr_augmented: torch.Tensor, hr_augmented: torch.Tensor) -> float:
    """Mean |INTER_AREA(HR) - LR| on the [-1, 1] scale; ~0.015-0.02 before augmentation (area vs cubic)."""
    hr_down = cv2.resize(hr_augmented[0, 0].numpy(), (64, 64), interpolation=cv2.INTER_AREA)
    return float(np.abs(hr_down - lr_augmented[0, 0].numpy()).mean())


def test_augmentation_keeps_lr_and_hr_aligned(train_set: PairDataset) -> None:
    lr, hr = train_set.pairs(torch.tensor([0]))
    config = AugmentConfig(hflip_probability=0.5, max_rotation_degrees=15, brightness_jitter=0.05)
    drawn = draw_augmentation(1, config, torch.Generator().manual_seed(3))
    assert drawn.rotation_degrees.abs().item() > 5 and drawn.flip.item()

    lr_augmented, hr_augmented = augment_pair(lr, hr, config, torch.Generator().manual_seed(3))
    aligned = _alignment_error(lr_augmented, hr_augmented)

    def lr_with(flip: bool, degrees: float) -> torch.Tensor:
        parameters = AugmentParameters(torch.tensor([flip]), torch.tensor([degrees]), drawn.brightness_shift)
        return apply_augmentation(lr, hr, parameters)[0]

    angle = drawn.rotation_degrees.item()
    assert torch.equal(lr_with(True, angle), lr_augmented)
    assert aligned < 0.025
    assert _alignment_error(lr_with(True, angle + 3), hr_augmented) > 3 * aligned
    assert _alignment_error(lr_with(False, angle), hr_augmented) > 5 * aligned


def test_same_seed_repeats_and_another_seed_differs(train_set: PairDataset) -> None:
    lr, hr = train_set.pairs(torch.arange(4))
    config = AugmentConfig()
    first = augment_pair(lr, hr, config, torch.Generator().manual_seed(7))
    again = augment_pair(lr, hr, config, torch.Generator().manual_seed(7))
    other = augment_pair(lr, hr, config, torch.Generator().manual_seed(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])


def test_certain_flip_without_rotation_is_torch_flip(train_set: PairDataset) -> None:
    lr, hr = train_set.pairs(torch.arange(3))
    config = AugmentConfig(hflip_probability=1, max_rotation_degrees=0, brightness_jitter=0)
    lr_augmented, hr_augmented = augment_pair(lr, hr, config, torch.Generator().manual_seed(0))
    assert torch.equal(lr_augmented, torch.flip(lr, [-1]))
    assert torch.equal(hr_augmented, torch.flip(hr, [-1]))


def test_brightness_shifts_the_mean_by_the_drawn_amount(train_set: PairDataset) -> None:
    lr, hr = train_set.pairs(torch.arange(5))
    lr, hr = lr * 0.5, hr * 0.5  # headroom, so no pixel reaches the clamp
    config = AugmentConfig(hflip_probability=0, max_rotation_degrees=0, brightness_jitter=0.3)
    shifts = draw_augmentation(5, config, torch.Generator().manual_seed(1)).brightness_shift
    lr_augmented, hr_augmented = augment_pair(lr, hr, config, torch.Generator().manual_seed(1))
    assert shifts.abs().max() <= 0.3 and shifts.abs().max() > 0.05
    torch.testing.assert_close((lr_augmented - lr).mean((1, 2, 3)), shifts)
    torch.testing.assert_close((hr_augmented - hr).mean((1, 2, 3)), shifts)


def test_brightness_clamps_to_unit_range() -> None:
    white = torch.ones(1, 1, 64, 64), torch.ones(1, 1, 256, 256)
    parameters = AugmentParameters(torch.tensor([False]), torch.tensor([0.0]), torch.tensor([0.2]))
    assert all(torch.equal(image, torch.ones_like(image)) for image in apply_augmentation(*white, parameters))


class _IndexDataset(PairDataset):
    """Stands in for a PairDataset of `size` pairs whose pixels are their own index."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def pairs(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return indices.float(), indices.float()


def test_batch_at_step_is_a_function_of_seed_and_step() -> None:
    dataset = _IndexDataset(50)
    assert torch.equal(batch_at_step(dataset, 13, 8, seed=4)[2], batch_at_step(dataset, 13, 8, seed=4)[2])
    assert not torch.equal(batch_at_step(dataset, 13, 8, seed=4)[2], batch_at_step(dataset, 13, 8, seed=5)[2])


def test_each_epoch_visits_an_index_at_most_once_and_epochs_differ() -> None:
    dataset = _IndexDataset(50)
    steps_per_epoch = 50 // 8
    epochs = []
    for epoch in range(3):
        steps = range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)
        indices = torch.cat([batch_at_step(dataset, step, 8, seed=0)[2] for step in steps])
        assert len(indices) == 48 and len(set(indices.tolist())) == 48
        epochs.append(indices)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])


def test_batch_at_step_samples_with_replacement_from_a_tiny_set(train_set: PairDataset) -> None:
    lr, hr, indices = batch_at_step(train_set, 2, 12, seed=0)
    assert lr.shape == (12, 1, 64, 64) and hr.shape == (12, 1, 256, 256)
    assert indices.min() >= 0 and indices.max() < len(train_set)
    expected_lr, expected_hr = train_set.pairs(indices)
    assert torch.equal(lr, expected_lr) and torch.equal(hr, expected_hr)
    assert not torch.equal(indices, batch_at_step(train_set, 3, 12, seed=0)[2])


def test_augmentation_generator_is_seeded_from_seed_and_step() -> None:
    def draws(generator: torch.Generator) -> torch.Tensor:
        return torch.rand(4, generator=generator)

    assert torch.equal(draws(augmentation_generator(0, 9)), draws(augmentation_generator(0, 9)))
    assert not torch.equal(draws(augmentation_generator(0, 9)), draws(augmentation_generator(0, 10)))
    assert not torch.equal(draws(augmentation_generator(0, 9)), draws(augmentation_generator(1, 9)))
    # Apart from the batch-order stream of the same number, so order and augmentation are not correlated.
    assert not torch.equal(draws(augmentation_generator(0, 9)), draws(torch.Generator().manual_seed(9)))


def test_lr_missing_under_the_hr_name_is_named(tmp_path: Path) -> None:
    name, other = _pair_names(2)
    _link(tmp_path, "HR_256", name, CXR / "HR_256" / name)
    _link(tmp_path, "LR_64", other, CXR / "LR_64" / name)
    _write_splits(tmp_path, [(name, "train")])
    with pytest.raises(ValueError, match=f"LR_64/{name}"):
        PairDataset(DataConfig(root=tmp_path), "train")


def test_wrong_image_size_is_named(tmp_path: Path) -> None:
    (name,) = _pair_names(1)
    _link(tmp_path, "HR_256", name, CXR / "LR_64" / name)
    _link(tmp_path, "LR_64", name, CXR / "LR_64" / name)
    _write_splits(tmp_path, [(name, "train")])
    with pytest.raises(ValueError, match=f"HR_256/{name} is 64x64, expected 256x256"):
        PairDataset(DataConfig(root=tmp_path), "train")


def test_unknown_split_value_is_rejected(tmp_path: Path) -> None:
    _write_splits(tmp_path, [("a.png", "training")])
    with pytest.raises(ValueError, match="line 2: split 'training'"):
        read_splits(tmp_path)


def test_degrade_reproduces_the_prepared_lr_images(cxr_root: Path) -> None:
    from xraysr.training.degradation import degrade

    names = sorted(path.name for path in (cxr_root / "HR_256").iterdir())
    hr = torch.stack([to_unit_range(_decode(cxr_root / "HR_256" / name))[None] for name in names])
    lr = torch.stack([_decode(cxr_root / "LR_64" / name)[None] for name in names])
    difference = (to_uint8(degrade(hr, 64)).int() - lr.int()).abs()
    # cv2.INTER_CUBIC and torch's bicubic differ only in float rounding: at most one grey level, rarely.
    assert difference.max() <= 1
    assert (difference > 0).float().mean() < 0.005
    blurred = F.avg_pool2d(hr, 4)
    assert (to_uint8(blurred).int() - lr.int()).abs().float().mean() > 5 * difference.float().mean()


def test_sources_keep_only_those_sources_images(cxr_root: Path, tmp_path: Path) -> None:
    """A leave-one-source-out run: the dataset holds the named sources only, and an unknown one is an error."""
    rows = [line.split(",") for line in (cxr_root / "splits.csv").read_text().splitlines()[1:]]
    root = tmp_path / "two_sources"
    for folder in ("HR_256", "LR_64"):
        (root / folder).mkdir(parents=True)
        for name, *_ in rows:
            (root / folder / name).symlink_to((cxr_root / folder / name).resolve())
    with (root / "splits.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "patient_id", "view", "split", "source"])
        for index, (name, patient, view, split) in enumerate(rows):
            writer.writerow([name, patient, view, split, "cxr" if index % 2 else "nih"])
    everything = PairDataset(DataConfig(root=root), "train")
    without_cxr = PairDataset(DataConfig(root=root, sources=("nih",)), "train")
    assert without_cxr.filenames == [name for index, (name, *_) in enumerate(rows) if index % 2 == 0 and index < 5]
    assert len(everything) == 5 > len(without_cxr)
    with pytest.raises(ValueError, match=r"no images of sources \['pediatric'\]"):
        PairDataset(DataConfig(root=root, sources=("nih", "pediatric")), "train")
