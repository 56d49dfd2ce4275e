"""What a Secondary Capture keeps of its input: an allow-list of attributes, each value checked against its VR
and VM (PS3.5 6.2, 6.4) before it is copied, so that the answer is valid DICOM whatever the input held.

A value is fixed when the fix is certain (a Code String upper-cased), else dropped: a PACS may reject a whole
file for one invalid value, and an answer filed without a bad PatientName is better than no answer. Sequences
keep at most ``MAX_ITEMS`` items of their own allow-listed attributes, so the copy is as deep as the list.
"""

from __future__ import annotations

import re
from typing import Any

from xraysr.service.image_errors import DICOM_ERRORS

MAX_ITEMS = 16
MAX_VALUES = 16
MAX_TEXT = 10240  # LT's limit: no kept attribute needs more, whatever its VR allows
TEXT_VRS = frozenset(
    ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT")
)
# Only these may hold CR, LF, FF and TAB (PS3.5 6.1.3); no value may hold another control character.
FORMATTED_TEXT_VRS = frozenset(("LT", "ST", "UT"))
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FORMATTED_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_NUMBER_VRS = frozenset(("DS", "IS"))

_CODE = ("CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning", "LongCodeValue", "URNCodeValue")
_HL7_DESIGNATOR = ("LocalNamespaceEntityID", "UniversalEntityID", "UniversalEntityIDType")
# Each kept sequence and the attributes its items keep (PS3.3 C.7.1.1, C.7.2.1, Table 10-17, Table 8.8-1).
ITEM_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "OtherPatientIDsSequence": (
        "PatientID",
        "IssuerOfPatientID",
        "TypeOfPatientID",
        "IssuerOfPatientIDQualifiersSequence",
    ),
    "IssuerOfPatientIDQualifiersSequence": ("UniversalEntityID", "UniversalEntityIDType", "IdentifierTypeCode"),
    "DeidentificationMethodCodeSequence": _CODE,
    "IssuerOfAccessionNumberSequence": _HL7_DESIGNATOR,
    "ProcedureCodeSequence": _CODE,
    "ReferencedStudySequence": ("ReferencedSOPClassUID", "ReferencedSOPInstanceUID"),
}


def kept_dataset(source: Any, keywords: tuple[str, ...], texts: list[str]) -> Any:
    """A new Dataset of ``keywords`` taken from ``source`` (both pydicom Datasets) with valid values only;
    every text value kept is appended to ``texts`` (the answer's character set depends on them)."""
    from pydicom.dataset import Dataset

    kept = Dataset()
    for keyword in keywords:
        element = kept_element(source, keyword, texts)
        if element is not None:
            kept.add(element)
    return kept


def kept_element(source: Any, keyword: str, texts: list[str]) -> Any:
    """``source``'s element ``keyword`` rebuilt from valid values, or None when it is absent or cannot be made
    valid. Reading a hostile element can raise anything pydicom raises: that element is dropped."""
    from pydicom.datadict import dictionary_VM, dictionary_VR
    from pydicom.dataelem import DataElement
    from pydicom.sequence import Sequence

    try:
        if keyword not in source:
            return None
        element = source[keyword]
        vr, value = str(element.VR), element.value
        if vr != dictionary_VR(keyword):
            return None  # UN, or a VR the dictionary does not give it: its bytes mean nothing certain
        if vr == "SQ":
            items = [kept_dataset(item, ITEM_ATTRIBUTES.get(keyword, ()), texts) for item in list(value)[:MAX_ITEMS]]
            items = [item for item in items if len(item)]
            return DataElement(keyword, vr, Sequence(items)) if items else None
        if vr not in TEXT_VRS:
            return None
        values = text_values(value)
    except DICOM_ERRORS:
        return None
    if not values:
        return DataElement(keyword, vr, None)  # present and empty: as the input had it
    if len(values) > MAX_VALUES or (dictionary_VM(keyword) == "1" and len(values) > 1):
        return None
    cleaned = [valid_text(vr, text) for text in values]
    if any(text is None for text in cleaned):
        return None
    texts.extend(text for text in cleaned if text is not None)
    return DataElement(keyword, vr, cleaned[0] if len(cleaned) == 1 else cleaned)


def valid_text(vr: str, text: str) -> str | None:
    """``text`` as a valid value of ``vr`` (a Code String upper-cased), or None."""
    from pydicom.valuerep import VALIDATORS

    if vr == "CS":
        text = text.strip().upper()
    if len(text) > MAX_TEXT:
        return None
    control = _FORMATTED_CONTROL if vr in FORMATTED_TEXT_VRS else _CONTROL
    if control.search(text) or ("\\" in text and vr not in FORMATTED_TEXT_VRS):
        return None  # a backslash would split one value in two
    validator = VALIDATORS.get(vr)
    if validator is not None and not validator(vr, text)[0]:
        return None
    if vr in _NUMBER_VRS and not _finite(text):
        return None
    return text


def output_character_set(source_terms: list[str], texts: list[str]) -> str | None:
    """SpecificCharacterSet for the answer: none when every kept value is ASCII; the input's single-byte set when
    every value encodes in it; else UTF-8 (ISO_IR 192), which holds any decoded value."""
    from pydicom.charset import python_encoding

    if all(text.isascii() for text in texts):
        return None
    terms = [term.strip().upper() for term in source_terms if term.strip()]
    if len(terms) == 1 and terms[0] in python_encoding and not terms[0].startswith("ISO 2022"):
        try:
            for text in texts:
                text.encode(python_encoding[terms[0]])
        except (UnicodeEncodeError, LookupError):
            return "ISO_IR 192"
        return terms[0]
    return "ISO_IR 192"


def text_values(value: Any) -> list[str]:
    """An element's values as text: none for an empty one."""
    if value is None or value == "":
        return []
    from pydicom.multival import MultiValue

    if not isinstance(value, (list, tuple, MultiValue)):  # a PersonName iterates its characters: one value
        value = [value]
    return ["" if item is None else item.decode("latin-1") if isinstance(item, bytes) else str(item) for item in value]


def _finite(text: str) -> bool:
    try:
        number = float(text)
    except ValueError:
        return False
    return number - number == 0  # not inf, not nan
