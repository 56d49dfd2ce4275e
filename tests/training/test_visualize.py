"""training/visualize.py: the comparison grid's layout, its nearest-upscaled LR tile, and its input checks."""

from __future__ import annotations

import numpy as np
import pytest

from xraysr.training.visualize import COLUMNS, comparison_grid


def _image(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)


def _row(seed: int) -> list[np.ndarray]:
    return [_image(64, seed), _image(256, seed + 1), _image(256, seed + 2), _image(256, seed + 3)]


def test_columns_are_lr_bicubic_sr_hr() -> None:
    assert COLUMNS == ("LR (nearest)", "bicubic", "SR", "HR")


def test_grid_of_two_rows_of_four() -> None:
    grid = comparison_grid([_row(0), _row(10)], gap=4)
    # 2 × 256 + 1 gap tall, 4 × 256 + 3 gaps wide.
    assert grid.shape == (516, 1036)
    assert grid.dtype == np.uint8


def test_gaps_are_white() -> None:
    grid = comparison_grid([_row(0), _row(10)], gap=4)
    assert (grid[256:260, :] == 255).all()
    for column in range(1, 4):
        start = column * 260 - 4
        assert (grid[:, start : start + 4] == 255).all()


def test_tiles_sit_at_their_row_and_column() -> None:
    rows = [_row(0), _row(10)]
    grid = comparison_grid(rows, gap=4)
    for r, row in enumerate(rows):
        for c in range(1, 4):
            assert np.array_equal(grid[r * 260 : r * 260 + 256, c * 260 : c * 260 + 256], row[c])


def test_lr_tile_is_nearest_upscaled() -> None:
    rows = [_row(0), _row(10)]
    grid = comparison_grid(rows, gap=4)
    for r, row in enumerate(rows):
        tile = grid[r * 260 : r * 260 + 256, 0:256]
        # Each LR pixel becomes a 4×4 block of its own value.
        assert np.array_equal(tile, np.kron(row[0], np.ones((4, 4), dtype=np.uint8)))
        assert tile[4 * 10 + 3, 4 * 20] == row[0][10, 20]


def test_gap_zero_and_a_single_image() -> None:
    image = _image(8, 0)
    assert np.array_equal(comparison_grid([[image]], gap=0), image)


def test_rows_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="row 1 has 3 images, expected 4"):
        comparison_grid([_row(0), _row(10)[:3]])


def test_non_uint8_images_are_refused() -> None:
    row = _row(0)
    row[2] = row[2].astype(np.float32)
    with pytest.raises(ValueError, match="grid images must be square 2-D uint8, got float32 \\(256, 256\\)"):
        comparison_grid([row])


def test_colour_images_are_refused() -> None:
    row = _row(0)
    row[3] = np.stack([row[3]] * 3, axis=-1)
    with pytest.raises(ValueError, match="grid images must be square 2-D uint8, got uint8 \\(256, 256, 3\\)"):
        comparison_grid([row])


@pytest.mark.parametrize("rows", [[], [[]]], ids=["no-rows", "empty-row"])
def test_an_empty_grid_is_refused(rows: list) -> None:
    with pytest.raises(ValueError, match="needs at least one row with one image"):
        comparison_grid(rows)


def test_non_square_images_are_refused() -> None:
    with pytest.raises(ValueError, match=r"square 2-D uint8, got uint8 \(256, 200\)"):
        comparison_grid([[np.zeros((256, 200), np.uint8)]])
