"""Real DICOM Part 10 files for the tests, written by pydicom: plain, deflated, and hostile."""

from __future__ import annotations

import zlib
from io import BytesIO

import numpy as np
import pytest


def dicom_file(
    stored: np.ndarray,
    *,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    samples_per_pixel: int = 1,
    transfer_syntax: str | None = None,
    pixel_data: bytes | None = None,
    **elements,
) -> bytes:
    """A real DICOM Part 10 file (DX for presentation) holding ``stored`` as its pixel data."""
    pydicom = pytest.importorskip("pydicom", reason="DICOM input needs pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = stored.shape[:2]
    dataset.SamplesPerPixel = samples_per_pixel
    dataset.PhotometricInterpretation = photometric
    if samples_per_pixel > 1:
        dataset.PlanarConfiguration = 0
    dataset.BitsAllocated = stored.dtype.itemsize * 8
    dataset.BitsStored = bits_stored or dataset.BitsAllocated
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 0
    dataset.PixelData = stored.tobytes() if pixel_data is None else pixel_data
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    assert pydicom.dcmread(BytesIO(buffer.getvalue())).Rows == stored.shape[0]
    return buffer.getvalue()


def deflate_bomb(inflated_bytes: int) -> bytes:
    """A Deflated Explicit VR Little Endian file whose dataset inflates to about ``inflated_bytes``: a 64x64
    header followed by a private OB element of zeros, deflated as PS3.5 A.5 says."""
    pytest.importorskip("pydicom", reason="DICOM input needs pydicom")
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    small = dicom_file(np.zeros((64, 64), np.uint8), transfer_syntax=DeflatedExplicitVRLittleEndian)
    meta_end = _file_meta_end(small)
    dataset = zlib.decompress(small[meta_end:], -zlib.MAX_WBITS)
    # (0009,0010) private creator, then (0009,1000) OB of zeros: legal, and it is what inflates.
    creator = b"BOMB"
    padding = inflated_bytes - len(dataset)
    filler = (
        b"\x09\x00\x10\x00LO" + len(creator).to_bytes(2, "little") + creator
        + b"\x09\x00\x00\x10OB\x00\x00" + padding.to_bytes(4, "little")
    )
    # Elements must ascend by tag: group 0009 sits between 0008 and 0010.
    split = _first_tag_offset(dataset, 0x0010)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(dataset[:split] + filler)
    zeros = bytes(1 << 20)
    for _ in range(padding // len(zeros)):
        body += compressor.compress(zeros)
    body += compressor.compress(bytes(padding % len(zeros))) + compressor.compress(dataset[split:])
    body += compressor.flush()
    return small[:meta_end] + body


def _file_meta_end(data: bytes) -> int:
    """The offset after the (0002,eeee) group: 128-byte preamble, DICM, then its group length's value."""
    group_length = int.from_bytes(data[132 + 8 : 132 + 12], "little")
    return 132 + 12 + group_length


def _first_tag_offset(dataset: bytes, group: int) -> int:
    """Where the first element of ``group`` starts in an explicit VR little-endian dataset."""
    offset = 0
    while offset < len(dataset):
        element_group = int.from_bytes(dataset[offset : offset + 2], "little")
        if element_group >= group:
            return offset
        vr = dataset[offset + 4 : offset + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            length = int.from_bytes(dataset[offset + 8 : offset + 12], "little")
            offset += 12 + length
        else:
            length = int.from_bytes(dataset[offset + 6 : offset + 8], "little")
            offset += 8 + length
    return offset
