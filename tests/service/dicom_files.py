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
        b"\x09\x00\x10\x00LO"
        + len(creator).to_bytes(2, "little")
        + creator
        + b"\x09\x00\x00\x10OB\x00\x00"
        + padding.to_bytes(4, "little")
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


def _explicit_element(group: int, element: int, vr: bytes, value: bytes, undefined: bool = False) -> bytes:
    """One Explicit VR Little Endian element; SQ/OB/UN take the 4-byte length (or the undefined length)."""
    tag = group.to_bytes(2, "little") + element.to_bytes(2, "little")
    if vr in (b"SQ", b"OB", b"UN"):
        length = 0xFFFFFFFF if undefined else len(value)
        return tag + vr + b"\x00\x00" + length.to_bytes(4, "little") + value
    return tag + vr + len(value).to_bytes(2, "little") + value


def _item(dataset: bytes, undefined: bool) -> bytes:
    if undefined:
        return b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + dataset + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    return b"\xfe\xff\x00\xe0" + len(dataset).to_bytes(4, "little") + dataset


def nested_sequence(depth: int, undefined: bool = False) -> bytes:
    """(0010,1002) OtherPatientIDsSequence nesting itself ``depth`` levels, built from the inside out (pydicom
    itself cannot write it: its writer recurses)."""
    inner = _explicit_element(0x0010, 0x0020, b"LO", b"ID")  # PatientID at the bottom
    for _ in range(depth):
        sequence = _item(inner, undefined) + (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" if undefined else b"")
        inner = _explicit_element(0x0010, 0x1002, b"SQ", sequence, undefined)
    return inner


def private_elements(count: int) -> bytes:
    """``count`` empty private LO elements in odd groups from 0009, ascending: 8 bytes each."""
    elements = []
    for index in range(count):
        group, element = 0x0009 + 2 * (index // 0xF000), 0x1000 + index % 0xF000
        elements.append(_explicit_element(group, element, b"LO", b""))
    return b"".join(elements)


def with_raw_elements(file: bytes, raw: bytes, before_group: int) -> bytes:
    """An Explicit VR Little Endian file with ``raw`` elements inserted before the first element of
    ``before_group`` or later (``raw``'s tags must sit between what comes before and after)."""
    meta_end = _file_meta_end(file)
    split = meta_end + _first_tag_offset(file[meta_end:], before_group)
    return file[:split] + raw + file[split:]


def jpeg_dicom(pixels: np.ndarray, repeat_last_scan: int = 0) -> bytes:
    """A JPEG (process 2, progressive) DICOM of 8-bit ``pixels``; its last scan repeated ``repeat_last_scan``
    more times, which a decoder runs as one more full pass each."""
    pytest.importorskip("pydicom", reason="DICOM input needs pydicom")
    from PIL import Image
    from pydicom.encaps import encapsulate

    buffer = BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, progressive=True)
    jpeg = buffer.getvalue()
    last_scan = jpeg.rindex(b"\xff\xda")
    scan = jpeg[last_scan:-2]  # SOS header and its entropy-coded data, up to EOI
    jpeg = jpeg[:-2] + scan * repeat_last_scan + b"\xff\xd9"
    return dicom_file(
        pixels,
        transfer_syntax="1.2.840.10008.1.2.4.51",  # JPEG Extended (processes 2 and 4): a progressive frame's own
        pixel_data=encapsulate([jpeg]),
        StudyInstanceUID="1.2.3.4",
    )
