"""DICOM bodies → 8-bit grayscale: rules 5 and 6 of service/imaging.py, kept apart because they are half of it.

pydicom is imported when the first DICOM body arrives, so a PNG-only deployment never loads it.

Nothing is allocated that the header has not bounded first. pydicom inflates a Deflated-transfer-syntax
dataset whole before it reads a single element (a 1 MB body can become 1 GB), so the file meta is read here
and the dataset inflated with a cap that follows the caller's pixel limit (``inflate_limit``). Before pydicom
parses anything, the file's elements are counted and its sequences' depth measured (dicom_structure.py). An
encapsulated (JPEG, JPEG 2000) frame declares its own size, which is checked against Rows and Columns before its
codec allocates anything, and a JPEG frame's scans are counted (codec_limits.py): each is a full decoding pass.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np

from xraysr.service.codec_limits import check_jpeg_scans
from xraysr.service.dicom_structure import check_structure
from xraysr.service.image_errors import (
    ANY_SIZE,
    DICOM_ERRORS,
    ImageError,
    InvalidImage,
    UnsupportedMediaType,
    UnsupportedPixels,
    check_pixel_count,
    check_size,
    looks_like,
    open_image_header,
)

DEFLATED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1.99"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
RLE_TRANSFER_SYNTAX = "1.2.840.10008.1.2.5"
# JPEG baseline, extended, lossless (process 14, and its first-order predictor), JPEG-LS lossless and near-lossless
JPEG_TRANSFER_SYNTAXES = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81))
PREAMBLE_AND_MAGIC = bytes(128) + b"DICM"
# An X-ray's attributes are a few kB; 4 MiB leaves room for private tags.
MAX_HEADER_BYTES = 4 << 20


@dataclass(frozen=True)
class _DicomHeader:
    """The attributes decoding needs, read once inside the pydicom error choke-point."""

    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    signed: bool
    slope: float
    intercept: float
    window: tuple[float, float] | None  # (center, width)
    voi_function: str
    has_modality_lut_sequence: bool
    transfer_syntax: str


def decode_dicom(data: bytes, expected_size: int, max_pixels: int) -> tuple[np.ndarray, str | None]:
    try:
        import pydicom  # noqa: F401 - the package itself: a cached submodule would not say it is gone
        from pydicom.errors import BytesLengthException, InvalidDicomError
    except ImportError as error:
        raise UnsupportedMediaType(
            "DICOM input needs the pydicom package, which is not installed on this server "
            "(pip install pydicom); send a PNG instead"
        ) from error
    errors = (InvalidDicomError, BytesLengthException, *DICOM_ERRORS)
    # 1. Parse and read the header, inflating a deflated dataset with a cap.
    try:
        # A caller that takes one size inflates no more than that size needs.
        dataset = read_dicom_dataset(data, expected_size**2 if expected_size != ANY_SIZE else max_pixels)
    except ImageError:
        raise
    except errors as error:
        received = looks_like(data)
        hint = f" (it looks like {received})" if received and received != "a DICOM file" else ""
        raise InvalidImage(f"not a readable DICOM file{hint}: {error}") from error
    try:
        header = _read_dicom_header(dataset)
    except ImageError:  # a missing element, already explained; ImageError is a ValueError, so let it through
        raise
    except errors as error:
        raise InvalidImage(f"corrupt DICOM header: {error}") from error
    # 2. Refuse what cannot be an X-ray for this model, before decoding pixels.
    _check_dicom_header(header, expected_size, max_pixels)
    # 3. Decode the stored values; a compressed frame's own header is checked before its codec runs.
    try:
        _check_transfer_syntax(dataset)
        _check_compressed_frame(dataset, header)
        stored = np.asarray(dataset.pixel_array)
    except ImageError:
        raise
    except errors as error:
        raise InvalidImage(f"cannot decode the DICOM pixel data ({header.transfer_syntax}): {error}") from error
    if stored.shape != (header.rows, header.columns):
        raise InvalidImage(f"DICOM pixel data has shape {stored.shape}, its header says {header.rows}x{header.columns}")
    # 4. Modality LUT, then VOI (window or full range) onto 0..255, then MONOCHROME1 inversion.
    return _dicom_to_gray8(stored, header)


def read_dicom_dataset(data: bytes, max_pixels: int = 64 * 64) -> Any:  # a pydicom Dataset
    """``pydicom.dcmread``, bounded: the file meta and the dataset are walked first (dicom_structure.py: element
    count, sequence depth), and a deflated dataset is inflated here, never past ``inflate_limit(max_pixels)``."""
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

    meta_end = check_structure(data, len(PREAMBLE_AND_MAGIC), implicit=False, little_endian=True, meta_only=True)
    stream = BytesIO(data)
    read_preamble(stream, False)
    meta = _read_file_meta_info(stream)
    transfer_syntax = str(meta.get("TransferSyntaxUID", ""))
    if transfer_syntax != DEFLATED_TRANSFER_SYNTAX:
        implicit = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
        check_structure(data, meta_end, implicit=implicit, little_endian=transfer_syntax != EXPLICIT_VR_BIG_ENDIAN)
        return pydicom.dcmread(BytesIO(data))
    limit = inflate_limit(max_pixels)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = inflater.decompress(stream.read(), limit + 1)
    if len(inflated) > limit:
        raise InvalidImage(
            f"the Deflated DICOM dataset inflates to more than {limit} bytes, this server's limit for an image of "
            f"at most {max_pixels} pixels (decompression-bomb guard); nothing was decoded"
        )
    check_structure(inflated, 0, implicit=False, little_endian=True)
    dataset = read_dataset(BytesIO(inflated), is_implicit_VR=False, is_little_endian=True)
    # Once inflated the pixel data is native Explicit VR Little Endian, which is what pydicom then decodes.
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dataset.file_meta = meta
    return dataset


def inflate_limit(max_pixels: int) -> int:
    """The most a Deflated dataset may inflate to: 16-bit pixels of the largest image the caller takes, plus
    ``MAX_HEADER_BYTES`` of attributes (4 MiB for /upscale's 64x64, 36 MiB for /shrink's 4096x4096)."""
    return 2 * max_pixels + MAX_HEADER_BYTES


def _check_transfer_syntax(dataset: Any) -> None:
    """A transfer syntax this server cannot decode is a media type it does not support: 415, naming the syntax
    and what is missing, so that the sender can convert it (or the operator install the plugin)."""
    from pydicom.pixels import get_decoder

    transfer_syntax = dataset.file_meta.TransferSyntaxUID
    name = transfer_syntax.name
    named = transfer_syntax if name == transfer_syntax else f"{name} ({transfer_syntax})"
    if not transfer_syntax.is_transfer_syntax:
        why = "it is not a transfer syntax this server knows"
    elif not transfer_syntax.is_compressed:
        return  # native (or deflated, inflated by then): decoded by numpy
    else:
        try:
            decoder = get_decoder(transfer_syntax)
        except NotImplementedError:
            why = "pydicom has no decoder for it"
        else:
            if decoder.is_available:
                return
            why = f"no decoder plugin for it is installed ({'; '.join(decoder.missing_dependencies)})"
    raise UnsupportedMediaType(
        f"DICOM transfer syntax {named} cannot be decoded by this server: {why}; send the image uncompressed "
        "(Explicit VR Little Endian, e.g. `gdcmconv --raw IN.dcm OUT.dcm`)"
    )


def _check_compressed_frame(dataset: Any, header: _DicomHeader) -> None:
    """An encapsulated frame's codec allocates what the frame's own header declares, not Rows x Columns.
    Runs after _check_transfer_syntax, so the frame's decoder is installed."""
    transfer_syntax = dataset.file_meta.TransferSyntaxUID
    if not transfer_syntax.is_compressed or transfer_syntax == RLE_TRANSFER_SYNTAX:
        return  # native data is Rows x Columns by construction; pydicom's RLE decoder sizes from the header too
    from pydicom.encaps import generate_frames

    frame = next(generate_frames(dataset.PixelData, number_of_frames=1), b"")
    if transfer_syntax in JPEG_TRANSFER_SYNTAXES:
        check_jpeg_scans(frame)
    image = open_image_header(frame, formats=None, what="the DICOM's compressed frame")
    with image:
        if image.size != (header.columns, header.rows):
            width, height = image.size
            raise InvalidImage(
                f"the DICOM's compressed frame is {width}x{height} but its header says "
                f"{header.columns}x{header.rows}; nothing was decoded"
            )


def _read_dicom_header(dataset: Any) -> _DicomHeader:  # a pydicom Dataset; pydicom is imported lazily
    for keyword in ("Rows", "Columns", "BitsAllocated", "PixelData"):
        if keyword not in dataset:
            raise InvalidImage(f"the DICOM file has no {keyword} element: it is not an image")
    window_center = _first_value(dataset.get("WindowCenter"))
    window_width = _first_value(dataset.get("WindowWidth"))
    window = None
    if window_center is not None and window_width is not None:
        window = (float(window_center), float(window_width))
    file_meta = getattr(dataset, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    return _DicomHeader(
        rows=int(dataset.Rows),
        columns=int(dataset.Columns),
        frames=int(_value_or(dataset, "NumberOfFrames", 1)),
        samples_per_pixel=int(_value_or(dataset, "SamplesPerPixel", 1)),
        photometric=str(_value_or(dataset, "PhotometricInterpretation", "")).strip().upper(),
        bits_allocated=int(dataset.BitsAllocated),
        bits_stored=int(_value_or(dataset, "BitsStored", dataset.BitsAllocated)),
        signed=int(_value_or(dataset, "PixelRepresentation", 0)) == 1,
        slope=float(_value_or(dataset, "RescaleSlope", 1.0)),
        intercept=float(_value_or(dataset, "RescaleIntercept", 0.0)),
        window=window,
        voi_function=str(_value_or(dataset, "VOILUTFunction", "LINEAR")).strip().upper(),
        has_modality_lut_sequence="ModalityLUTSequence" in dataset,
        transfer_syntax=getattr(transfer_syntax, "name", None) or str(transfer_syntax or "unknown transfer syntax"),
    )


def _value_or(dataset: Any, keyword: str, default: Any) -> Any:
    """The element's value, or ``default`` when it is absent or empty (0 is a value, not a default)."""
    value = dataset.get(keyword)
    return default if value is None or value == "" else value


def _first_value(value: Any) -> Any:  # a pydicom value: None, "", a number or a MultiValue
    if value is None or value == "":
        return None
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        return value[0] if len(value) else None
    return value


def _check_dicom_header(header: _DicomHeader, expected_size: int, max_pixels: int) -> None:
    if header.frames < 1:
        raise InvalidImage(f"invalid NumberOfFrames {header.frames}")
    if header.frames > 1:
        raise UnsupportedPixels(f"multi-frame DICOM with {header.frames} frames: xraysr takes a single image")
    check_pixel_count(header.columns, header.rows, header.frames, max_pixels)
    check_size(header.columns, header.rows, expected_size)
    if header.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedPixels(
            f"DICOM PhotometricInterpretation {header.photometric or 'missing'}: xraysr takes grayscale X-rays "
            "(MONOCHROME1 or MONOCHROME2)"
        )
    if header.samples_per_pixel != 1:
        raise InvalidImage(f"DICOM SamplesPerPixel {header.samples_per_pixel} is invalid for {header.photometric}")
    if header.bits_allocated not in (8, 16) or not 1 <= header.bits_stored <= header.bits_allocated:
        raise UnsupportedPixels(
            f"DICOM with BitsAllocated {header.bits_allocated}, BitsStored {header.bits_stored}: "
            "xraysr takes 8- or 16-bit allocated grayscale"
        )
    if header.has_modality_lut_sequence:
        raise UnsupportedPixels("DICOM with a Modality LUT Sequence: only RescaleSlope/RescaleIntercept are supported")
    _check_rescale(header)
    if header.window is not None:
        center, width = header.window
        if header.voi_function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            raise UnsupportedPixels(f"VOILUTFunction {header.voi_function} is not supported")
        # LINEAR divides by (width - 1) and needs width >= 1; LINEAR_EXACT and SIGMOID need width > 0.
        usable = width >= 1.0 if header.voi_function == "LINEAR" else width > 0.0
        if not (np.isfinite(center) and np.isfinite(width) and usable):
            raise InvalidImage(f"invalid window: WindowCenter {center}, WindowWidth {width}")


def _check_rescale(header: _DicomHeader) -> None:
    """The modality LUT must map the stored range onto a finite, non-empty range of float64 values."""
    for name, value in (("RescaleSlope", header.slope), ("RescaleIntercept", header.intercept)):
        if not np.isfinite(value):
            raise InvalidImage(f"invalid DICOM {name} {value}: it must be a finite number")
    if header.slope == 0:
        raise InvalidImage("invalid DICOM RescaleSlope 0: it would map every pixel to one value")
    low, high = _rescaled_range(header)
    if not (np.isfinite(low) and np.isfinite(high)) or not high > low:
        culprit = "RescaleSlope" if abs(header.slope) > abs(header.intercept) else "RescaleIntercept"
        raise InvalidImage(
            f"invalid DICOM {culprit}: RescaleSlope {header.slope} and RescaleIntercept {header.intercept} "
            f"{'overflow' if not np.isfinite([low, high]).all() else 'collapse'} the stored pixel range in "
            "floating point"
        )


def _stored_range(header: _DicomHeader) -> tuple[int, int]:
    if header.signed:
        return -(2 ** (header.bits_stored - 1)), 2 ** (header.bits_stored - 1) - 1
    return 0, 2**header.bits_stored - 1


def _rescaled_range(header: _DicomHeader) -> tuple[float, float]:
    with np.errstate(over="ignore", invalid="ignore"):
        ends = sorted(float(np.float64(end) * header.slope + header.intercept) for end in _stored_range(header))
    return ends[0], ends[1]


def _dicom_to_gray8(stored: np.ndarray, header: _DicomHeader) -> tuple[np.ndarray, str | None]:
    values = stored.astype(np.float64) * header.slope + header.intercept  # PS3.3 C.11.1.1.2 modality LUT
    steps: list[str] = []
    if header.window is not None:
        gray = _apply_window(values, *header.window, header.voi_function)
        steps.append("window_applied")
    else:
        low, high = _rescaled_range(header)
        gray = (values - low) * (255.0 / (high - low))
        if (*_stored_range(header), header.slope, header.intercept) != (0, 255, 1.0, 0.0):
            steps.append("full_range_rescaled")
    gray8 = np.rint(np.clip(gray, 0.0, 255.0)).astype(np.uint8)
    if header.photometric == "MONOCHROME1":  # PS3.3 C.7.6.3.1.2: minimum value is white
        gray8 = 255 - gray8
        steps.append("monochrome1_inverted")
    return gray8, "+".join(steps) or None


def _apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2-3 VOI LUT functions onto [0, 255]."""
    if function == "SIGMOID":
        with np.errstate(over="ignore"):  # exp overflows to inf far below the window, giving exactly 0
            return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0) * 255.0
    if width == 1.0:  # the LINEAR formula's (w - 1) vanishes: a threshold at c - 0.5
        return np.where(values > center - 0.5, 255.0, 0.0)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0) * 255.0
