"""Work bounds for the codecs, checked on the bytes before a decoder runs: a small body must not mean long work.

- PNG: Pillow walks every chunk in Python (5.2 M empty private chunks in a 60 MiB body: 15 s, 935 MB), so the
  chunks are counted first: at most ``MAX_PNG_CHUNKS`` in all, ``MAX_PNG_ANCILLARY_CHUNKS`` of them not IDAT.
- JPEG (a DICOM's compressed frame): a progressive JPEG decodes every scan over the whole image, and a scan can
  be 56 bytes (2,000 repeats of one: 22 s for a 174 KB body), so a frame with more than ``MAX_JPEG_SCANS`` is
  refused. Encoders write at most about ten (libjpeg's progressive script: 6 for grayscale, 10 for colour).
"""

from __future__ import annotations

import re
import struct

from xraysr.service.image_errors import InvalidImage

# libpng and Pillow write IDAT chunks of 8-64 KiB: a 64 MiB PNG holds at most ~8,200 of them.
MAX_PNG_CHUNKS = 16_384
MAX_PNG_ANCILLARY_CHUNKS = 256
MAX_JPEG_SCANS = 32

_PNG_SIGNATURE_LENGTH = 8
# A marker: 0xFF (fill bytes may repeat it), then a marker code other than a restart marker. Entropy-coded data
# never holds one: JPEG stuffs 0xFF with 0x00, JPEG-LS with a byte under 0x80.
_JPEG_MARKER = re.compile(rb"\xff+([\x01\xc0-\xcf\xd8-\xfe])")
_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = frozenset((0x01, 0xD8, _EOI))  # TEM, SOI, EOI: no length field


def check_png_chunks(data: bytes) -> None:
    """``InvalidImage`` (422) when a PNG has more chunks than any encoder writes; stops at IEND."""
    position, chunks, ancillary = _PNG_SIGNATURE_LENGTH, 0, 0
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        chunks += 1
        ancillary += kind != b"IDAT"
        if chunks > MAX_PNG_CHUNKS or ancillary > MAX_PNG_ANCILLARY_CHUNKS:
            many = f"{MAX_PNG_CHUNKS} chunks" if chunks > MAX_PNG_CHUNKS else f"{MAX_PNG_ANCILLARY_CHUNKS} other chunks"
            raise InvalidImage(
                f"the PNG has more than {many}, this server's limit (an encoder writes a few, and IDAT chunks of "
                "8 KiB or more); nothing was decoded"
            )
        if kind == b"IEND":
            return
        position += 12 + length  # length, type, data, CRC


def count_jpeg_scans(data: bytes) -> int:
    """The number of scans (SOS markers) in a JPEG stream, walking its segments and skipping entropy-coded data."""
    scans, position = 0, 0
    while (marker := _JPEG_MARKER.search(data, position)) is not None:
        code, position = marker.group(1)[0], marker.end()
        if code == _EOI:
            break
        if code in _STANDALONE:
            continue
        if position + 2 > len(data):
            break
        (length,) = struct.unpack_from(">H", data, position)
        position += length  # the segment's header, after which a scan's entropy-coded data is searched for markers
        scans += code == _SOS
    return scans


def check_jpeg_scans(data: bytes) -> None:
    scans = count_jpeg_scans(data)
    if scans > MAX_JPEG_SCANS:
        raise InvalidImage(
            f"the JPEG image has {scans} scans, over this server's limit of {MAX_JPEG_SCANS} (an encoder writes at "
            "most about ten; each scan is a full decoding pass); nothing was decoded"
        )
