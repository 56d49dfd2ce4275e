"""service/shrink.py and `xraysr shrink`: the training recipe, pixel for pixel what `xraysr prepare` writes."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import xrays
from tests.service.conftest import bomb_png, png_of
from tests.service.dicom_files import dicom_file
from xraysr.service.cli import main
from xraysr.service.image_errors import InvalidImage
from xraysr.service.shrink import RECIPE, TooSmall, center_square, shrink, shrink_file

cv2 = pytest.importorskip("cv2", reason="checking against OpenCV and `xraysr prepare` needs the train extra")

@pytest.fixture(scope="module")
def raw_nih() -> list[Path]:
    """Raw 1024² 8-bit PNGs as NIH releases its films (the suite's phantoms: tests/xrays.py)."""
    return xrays.raw_paths(3)


def _recipe_with_cv2(pixels: np.ndarray) -> np.ndarray:
    square = np.ascontiguousarray(center_square(pixels))
    hr = cv2.resize(square, (256, 256), interpolation=cv2.INTER_AREA)
    return cv2.resize(hr, (64, 64), interpolation=cv2.INTER_CUBIC)


def test_shrinking_a_raw_nih_png_gives_the_pixels_xraysr_prepare_wrote(raw_nih: list[Path], tmp_path: Path) -> None:
    from xraysr.training.prepare import prepare

    images = tmp_path / "raw"
    images.mkdir()
    for path in raw_nih[:3]:
        shutil.copy(path, images / path.name)
    prepare(images, tmp_path / "prepared", views=None, workers=1, show_progress=False)
    for path in raw_nih[:3]:
        shrunk = shrink_file(path.read_bytes(), "image/png")
        prepared = np.asarray(Image.open(tmp_path / "prepared" / "LR_64" / path.name))
        np.testing.assert_array_equal(shrunk.pixels, prepared, err_msg=path.name)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(shrunk.png))), prepared)
        assert (shrunk.original_width, shrunk.original_height, shrunk.conversion) == (1024, 1024, None)


def test_the_centre_square_is_the_one_training_takes() -> None:
    from xraysr.training.prepare_images import center_square as training_center_square

    for shape in ((7, 7), (7, 10), (10, 7), (9, 4), (300, 451)):
        image = np.arange(shape[0] * shape[1], dtype=np.int64).reshape(shape)
        np.testing.assert_array_equal(center_square(image), training_center_square(image))


@pytest.mark.parametrize("crop", [(1024, 900), (901, 1024), (1000, 1000), (700, 650), (256, 300)])
def test_any_shape_follows_the_recipe_as_opencv_runs_it(raw_nih: list[Path], crop: tuple[int, int]) -> None:
    pixels = np.asarray(Image.open(raw_nih[1]).convert("L"))[: crop[0], : crop[1]].copy()
    np.testing.assert_array_equal(shrink(pixels), _recipe_with_cv2(pixels))


def test_a_dicom_shrinks_like_the_same_pixels_as_png(raw_nih: list[Path]) -> None:
    pixels = np.asarray(Image.open(raw_nih[0]).convert("L"))
    from_dicom = shrink_file(dicom_file(pixels), "application/dicom")
    np.testing.assert_array_equal(from_dicom.pixels, _recipe_with_cv2(pixels))
    stored = pixels.astype(np.uint16) * 257  # 16-bit: decoded over the full range back to the same 8 bits
    from_16bit = shrink_file(dicom_file(stored, bits_stored=16), "application/dicom")
    np.testing.assert_array_equal(from_16bit.pixels, from_dicom.pixels)
    assert from_16bit.conversion == "full_range_rescaled"


def test_the_png_says_what_made_it() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (300, 400), dtype=np.uint8)
    image = Image.open(io.BytesIO(shrink_file(png_of(pixels), None).png))
    assert (image.size, image.mode) == ((64, 64), "L")
    assert image.text["Description"] == f"64x64 input for xraysr made from a 400x300 image: {RECIPE}"
    assert image.text["Software"].startswith("xraysr ")


def test_too_small_images_are_refused_saying_why() -> None:
    with pytest.raises(TooSmall) as caught:
        shrink(np.zeros((255, 400), np.uint8))
    assert caught.value.status_code == 422
    assert caught.value.message == (
        "the image is 400x255; shrinking needs a short side of at least 256 pixels, because the training recipe "
        f"({RECIPE}) never enlarges"
    )
    with pytest.raises(TooSmall, match=r"\(a 64x64 image is already the model's input size\)$"):
        shrink_file(png_of(np.zeros((64, 64), np.uint8)), "image/png")


def test_the_decompression_bomb_limit_still_holds() -> None:
    with pytest.raises(InvalidImage, match="over this server's limit of 16777216 pixels"):
        shrink_file(bomb_png(4097, 4096), "image/png")


def test_shrink_refuses_what_is_not_a_2d_uint8_image() -> None:
    with pytest.raises(ValueError, match=r"2-D uint8 array \(H x W\); got shape \(300, 300, 3\), dtype uint8"):
        shrink(np.zeros((300, 300, 3), np.uint8))


def test_the_command_shrinks_a_file_and_a_folder_past_a_bad_file(
    raw_nih: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "one.png"
    assert main(["shrink", str(raw_nih[0]), "-o", str(output)]) == 0
    expected = _recipe_with_cv2(np.asarray(Image.open(raw_nih[0]).convert("L")))
    np.testing.assert_array_equal(np.asarray(Image.open(output)), expected)
    assert f"{output} (1024x1024 -> 64x64: {RECIPE})" in capsys.readouterr().out

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(raw_nih[0], folder / "a.png")
    (folder / "b_small.png").write_bytes(png_of(np.zeros((100, 100), np.uint8)))
    (folder / "notes.txt").write_text("not an image")
    assert main(["shrink", str(folder), "-o", str(tmp_path / "out")]) == 1
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a.png"]
    captured = capsys.readouterr()
    assert f"xraysr shrink: error: {folder / 'b_small.png'}: the image is 100x100; shrinking needs" in captured.err
    assert "Traceback" not in captured.err
