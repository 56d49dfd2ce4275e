"""A DICOM dataset's shape, bounded before pydicom parses it: how many elements, and how deep its sequences nest.

pydicom reads a whole dataset's elements eagerly (7.9 M empty private elements in a 60 MiB body take 40 s and
2.8 GB) and parses sequences recursively (a few hundred nested levels exhaust Python's stack, then memory, when
the dataset is copied or written). This walk reads only tags, VRs and lengths, with an explicit stack, and
stops at ``MAX_ELEMENTS`` or ``MAX_SEQUENCE_DEPTH``; it follows pydicom's reading rules (an explicit-VR element
whose VR is not two capitals is read as implicit, undefined-length UN is a sequence, an unknown undefined-length
tag is a sequence when an item follows) so that the bound holds for what pydicom will actually build.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from xraysr.service.image_errors import InvalidImage

# A DX header is a few hundred elements; vendors' private groups add a few thousand at most.
MAX_ELEMENTS = 10_000
# Image IODs nest three or four levels (code sequences inside functional groups); 16 leaves room to spare.
MAX_SEQUENCE_DEPTH = 16

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
META_GROUP = 0x0002
# PS3.5 7.1.2: these VRs have a 2-byte reserved field and a 4-byte length in explicit VR.
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())


@dataclass
class _Frame:
    kind: str  # "dataset" (elements), "sequence" (items) or "fragments" (encapsulated pixel data)
    end: int | None  # None: undefined length, ended by a delimiter
    depth: int


def check_structure(data: bytes, start: int, *, implicit: bool, little_endian: bool, meta_only: bool = False) -> int:
    """Walk the dataset that begins at ``start``; raise ``InvalidImage`` (422) past a bound or on a broken
    structure. With ``meta_only``, stop at the first element outside group 0002 and return its offset."""
    endian = "<" if little_endian else ">"
    tag_of = struct.Struct(f"{endian}HH").unpack_from
    u16, u32 = struct.Struct(f"{endian}H"), struct.Struct(f"{endian}I")
    stack = [_Frame("dataset", len(data), 0)]
    position, elements = start, 0
    while stack:
        frame = stack[-1]
        if frame.end is not None and position >= frame.end:
            position = frame.end  # pydicom reads a defined-length value whole, then parses within it
            stack.pop()
            continue
        if position + 8 > len(data):
            if frame.end is None or len(stack) > 1:
                raise _broken(position, "the data ends inside a sequence")
            return position  # the top-level dataset ends here
        group, element = tag_of(data, position)
        tag = group << 16 | element
        if meta_only and group != META_GROUP:
            return position
        elements += 1
        if elements > MAX_ELEMENTS:
            raise InvalidImage(
                f"the DICOM file has more than {MAX_ELEMENTS} elements, this server's limit (an X-ray's header has "
                "a few hundred); nothing was decoded"
            )
        if frame.kind != "dataset":
            position = _item(data, position, tag, frame, stack, u32)
            continue
        if tag == ITEM_END and frame.end is None and len(stack) > 1:
            position += 8
            stack.pop()
            continue
        vr, length, position = _element_header(data, position, implicit, u16, u32)
        if length != UNDEFINED and not (vr == b"SQ" or (vr is None and _dictionary_vr(tag) == "SQ")):
            position += length
            continue
        if length == UNDEFINED and tag == PIXEL_DATA:
            stack.append(_Frame("fragments", None, frame.depth))
            continue
        if length == UNDEFINED and not _is_sequence(data, position, tag, vr, endian):
            end = data.find(struct.pack(f"{endian}HHI", 0xFFFE, 0xE0DD, 0), position)
            if end < 0:
                raise _broken(position, "an undefined-length value has no delimiter")
            position = end + 8
            continue
        if frame.depth + 1 > MAX_SEQUENCE_DEPTH:
            raise InvalidImage(
                f"the DICOM file nests sequences more than {MAX_SEQUENCE_DEPTH} deep, this server's limit (an X-ray's "
                "header nests three or four); nothing was decoded"
            )
        stack.append(_Frame("sequence", None if length == UNDEFINED else position + length, frame.depth + 1))
    return position


def _item(data: bytes, position: int, tag: int, frame: _Frame, stack: list[_Frame], u32: struct.Struct) -> int:
    """One item of a sequence (a nested dataset) or of encapsulated pixel data (a fragment, skipped)."""
    if tag == SEQUENCE_END and frame.end is None:
        stack.pop()
        return position + 8
    if tag != ITEM:
        raise _broken(position, f"expected a sequence item, found tag ({tag >> 16:04X},{tag & 0xFFFF:04X})")
    (length,) = u32.unpack_from(data, position + 4)
    position += 8
    if frame.kind == "fragments":
        if length == UNDEFINED:
            raise _broken(position, "a pixel data fragment has an undefined length")
        return position + length
    stack.append(_Frame("dataset", None if length == UNDEFINED else position + length, frame.depth))
    return position


def _element_header(
    data: bytes, position: int, implicit: bool, u16: struct.Struct, u32: struct.Struct
) -> tuple[bytes | None, int, int]:
    """(VR or None when implicit, value length, offset of the value), as pydicom's data_element_generator reads
    them: in explicit VR, a VR that is not two capitals means this element is implicit."""
    vr = None if implicit else data[position + 4 : position + 6]
    if vr is not None and not b"AA" <= vr <= b"ZZ":
        vr = None
    if vr is None:
        (length,) = u32.unpack_from(data, position + 4)
        return None, length, position + 8
    if vr in LONG_VRS:
        if position + 12 > len(data):
            raise _broken(position, "the data ends inside an element's header")
        (length,) = u32.unpack_from(data, position + 8)
        return vr, length, position + 12
    (length,) = u16.unpack_from(data, position + 6)
    return vr, length, position + 8


def _is_sequence(data: bytes, position: int, tag: int, vr: bytes | None, endian: str) -> bool:
    """pydicom's rule for an undefined-length value: SQ and UN are sequences; an implicit (or UN) element takes
    its dictionary VR, and one the dictionary does not know is a sequence when an item tag follows."""
    if vr in (b"SQ", b"UN"):
        return True
    if vr is not None:
        return False
    known = _dictionary_vr(tag)
    if known is not None:
        return known == "SQ"
    return data[position : position + 4] == struct.pack(f"{endian}HH", 0xFFFE, 0xE000)


def _dictionary_vr(tag: int) -> str | None:
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def _broken(position: int, why: str) -> InvalidImage:
    return InvalidImage(f"corrupt DICOM file: {why} (byte {position}); nothing was decoded")
