"""The answer as DICOM: the super-resolved pixels and the input DICOM → a Secondary Capture in the input's study.

What is written (PS3.3 A.8.1, Secondary Capture Image IOD), module by module:
- Patient, Patient Study, Clinical Trial Subject and Study: copied from the input (``KEPT_ATTRIBUTES``), so that
  a PACS files the answer under the same patient. Only valid values are copied (service/dicom_values.py: checked
  against their VR and VM; a Code String upper-cased, anything else invalid left out), and the character set is
  the input's when every kept value is in it, else UTF-8 (ISO_IR 192), or none for ASCII.
- General Study: copied, StudyInstanceUID included: the answer joins the input's study.
- General Series: a new series (service/dicom_uids.py: one per model run and study), numbered 9000-9999,
  SeriesDate/Time now; Modality is the input's (OT when it has none), BodyPartExamined the input's, and its side
  (Laterality) when it has one.
- General Equipment and SC Equipment: xraysr and its model; ConversionType WSD (made on a workstation).
- General Image: ImageType DERIVED\\SECONDARY; DerivationDescription naming xraysr, the model and its version, steps,
  samples and seed, and that the image is synthetic, not for diagnosis (ImageComments says it again for viewers
  that show only those); SourceImageSequence pointing at the input's SOP Class and Instance; BurnedInAnnotation
  NO; PatientOrientation and InstanceNumber of the input; Content Date/Time now. A lossy input stays flagged lossy
  (LossyImageCompression 01: PS3.3 C.7.6.1.1.5 — once lossy, its derivatives are too).
- SC Image: PixelSpacing, and ImagerPixelSpacing, divided by the scale (4) when the input has them: the same field
  of view in 4x the pixels (the input's PixelSpacingCalibrationType/Description still hold). Date/Time of Secondary
  Capture now.
- Image Pixel: 8-bit MONOCHROME2, the very pixels of the PNG answer for the same seed. A MONOCHROME1 input was
  inverted when read, so bone is bright here as in the PNG. No rescale, window or VOI LUT attribute is carried
  over: the 8 bits are the display values, full range, and the input's would no longer apply.
- SOP Common: SOP Class Secondary Capture Image Storage, a new SOP Instance UID. Part 10 file meta: Explicit VR
  Little Endian, Media Storage SOP Class/Instance equal to the dataset's, ImplementationClassUID under the UID root.

Everything else of the input (private tags, overlays, acquisition attributes) is left out.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from typing import TYPE_CHECKING, Any

import numpy as np

from xraysr.service import __version__
from xraysr.service.dicom import read_dicom_dataset
from xraysr.service.dicom_uids import implementation_class_uid, make_uid, series_instance_uid
from xraysr.service.dicom_values import kept_dataset, output_character_set, text_values, valid_text
from xraysr.service.image_errors import DICOM_ERRORS, NotAcceptable
from xraysr.service.provenance import DISCLAIMER

if TYPE_CHECKING:
    from xraysr.service.manifest import Manifest
    from xraysr.service.pipeline import UpscaleResult

SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
NEEDS_DICOM_INPUT = (
    "DICOM output (Accept: application/dicom) needs a DICOM input: its patient and study tags are what the "
    "answer is filed under; send the DICOM, or accept image/png"
)
KEPT_ATTRIBUTES = (
    # Patient (PS3.3 C.7.1.1)
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "EthnicGroup",
    "PatientComments",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    # Clinical Trial Subject (C.7.1.3)
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    # General Study (C.7.2.1)
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence",
    "ReferencedStudySequence",
    # Patient Study (C.7.2.2)
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    # Clinical Trial Study (C.7.2.3)
    "ClinicalTrialTimePointID",
    "ClinicalTrialTimePointDescription",
    # General Series and General Image attributes that describe the anatomy, which upscaling does not change
    "BodyPartExamined",
    "PatientOrientation",
    # The spacing's meaning (PS3.3 10.7.1.1, the SC Image module's Basic Pixel Spacing Calibration macro)
    "PixelSpacingCalibrationType",
    "PixelSpacingCalibrationDescription",
    "InstanceNumber",
    # Lossy history (C.7.6.1.1.5)
    "LossyImageCompression",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
)
# Type 2 attributes of the Patient, General Study, General Series and General Image modules: present, if empty.
_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "PatientOrientation",
    "InstanceNumber",
)
_LOSSY_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.203",  # HTJ2K
}
SIDES = ("R", "L")  # Laterality's enumerated values (PS3.3 C.7.3.1)
MAX_ST_LENGTH = 1024  # PS3.5 6.2: Short Text
MAX_LO_LENGTH = 64


@dataclass(frozen=True)
class DicomSource:
    """What the answer takes from the input DICOM, read before the model runs so that an input that cannot
    make a DICOM answer costs no model time."""

    kept: Any  # a pydicom Dataset of KEPT_ATTRIBUTES
    sop_class_uid: str
    sop_instance_uid: str
    modality: str
    pixel_spacing: tuple[float, float] | None
    imager_pixel_spacing: tuple[float, float] | None
    lossy: bool
    laterality: str | None  # R or L: the input's Laterality, or its (DX) ImageLaterality


def read_source(data: bytes) -> DicomSource:
    """The input's attributes for a Secondary Capture (``data`` has already been decoded as an image), or
    ``NotAcceptable`` (406) when it lacks the UIDs the answer must point back to."""
    dataset = read_dicom_dataset(data)
    meta = dataset.file_meta
    uids = {
        "StudyInstanceUID": _first(dataset, "StudyInstanceUID"),
        "SOPClassUID": _first(dataset, "SOPClassUID") or _first(meta, "MediaStorageSOPClassUID"),
        "SOPInstanceUID": _first(dataset, "SOPInstanceUID") or _first(meta, "MediaStorageSOPInstanceUID"),
    }
    missing = [keyword for keyword, uid in uids.items() if not uid]
    if missing:
        raise NotAcceptable(
            f"DICOM output needs the input's {' and '.join(missing)} (the answer joins the input's study and "
            "points back to it); this DICOM has none: ask for a PNG, or send a DICOM that has them"
        )
    invalid = [keyword for keyword, uid in uids.items() if valid_text("UI", uid) is None]
    if invalid:
        raise NotAcceptable(
            f"DICOM output needs valid UIDs, and the input's {' and '.join(invalid)} is not one (digits and dots, "
            "at most 64 characters): the answer could not join its study; ask for a PNG"
        )
    texts: list[str] = []
    kept = kept_dataset(dataset, KEPT_ATTRIBUTES, texts)
    character_set = output_character_set(_values_of(dataset, "SpecificCharacterSet"), texts)
    if character_set is not None:
        kept.SpecificCharacterSet = character_set
    lossy = str(dataset.get("LossyImageCompression", "")) == "01" or (
        str(meta.get("TransferSyntaxUID", "")) in _LOSSY_TRANSFER_SYNTAXES
    )
    sides = (dataset.get("Laterality"), dataset.get("ImageLaterality"))
    return DicomSource(
        kept=kept,
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        modality=valid_text("CS", _first(dataset, "Modality")) or "OT",
        pixel_spacing=_spacing(dataset, "PixelSpacing"),
        imager_pixel_spacing=_spacing(dataset, "ImagerPixelSpacing"),
        lossy=lossy,
        laterality=next((str(side) for side in sides if side in SIDES), None),
    )


def secondary_capture(
    source: DicomSource,
    result: UpscaleResult,
    manifest: Manifest,
    uid_root: str | None,
    note: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """The Part 10 file of a Secondary Capture holding ``result.image`` (uint8, H x W), made from ``source``;
    ``note`` adds what else was done to the image to its DerivationDescription."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import UID, ExplicitVRLittleEndian
    from pydicom.valuerep import format_number_as_ds

    image = result.image
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"a Secondary Capture takes a 2-D uint8 image, got {image.dtype} {image.shape}")
    now = now or datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    software = [f"xraysr {__version__}", manifest.version]
    scale = manifest.image.hr_size / manifest.image.lr_size
    dataset = Dataset()
    dataset.update(copy.deepcopy(source.kept))
    # SOP Common
    dataset.SOPClassUID = SECONDARY_CAPTURE_IMAGE_STORAGE
    dataset.SOPInstanceUID = make_uid(uid_root)
    dataset.InstanceCreationDate, dataset.InstanceCreationTime = date, time
    # General Series
    dataset.Modality = source.modality
    dataset.SeriesInstanceUID = series_instance_uid(uid_root, manifest.version, str(source.kept.StudyInstanceUID))
    dataset.SeriesNumber = series_number(dataset.SeriesInstanceUID)
    dataset.SeriesDate, dataset.SeriesTime = date, time
    dataset.SeriesDescription = f"SYNTHETIC xraysr {scale:g}x super-resolution {manifest.version}"[:MAX_LO_LENGTH]
    # General Equipment, SC Equipment
    dataset.Manufacturer = "xraysr"
    dataset.ManufacturerModelName = manifest.model
    dataset.SoftwareVersions = software
    dataset.ConversionType = "WSD"
    dataset.SecondaryCaptureDeviceManufacturer = "xraysr"
    dataset.SecondaryCaptureDeviceManufacturerModelName = manifest.model
    dataset.SecondaryCaptureDeviceSoftwareVersions = software
    # General Image, SC Image
    dataset.ImageType = ["DERIVED", "SECONDARY"]
    dataset.ContentDate, dataset.ContentTime = date, time
    dataset.DateOfSecondaryCapture, dataset.TimeOfSecondaryCapture = date, time
    dataset.DerivationDescription = derivation_description(result, manifest, note)
    dataset.ImageComments = DISCLAIMER
    dataset.BurnedInAnnotation = "NO"
    if source.lossy:
        dataset.LossyImageCompression = "01"
    # Laterality is 2C, required for a paired body part: the input's side; with no body part named, present and
    # empty ("not known"); for a named part without a side (CHEST), absent, as for an unpaired structure.
    if source.laterality is not None:
        dataset.Laterality = source.laterality
    elif not dataset.get("BodyPartExamined"):
        dataset.Laterality = None
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.sop_class_uid
    reference.ReferencedSOPInstanceUID = source.sop_instance_uid
    dataset.SourceImageSequence = Sequence([reference])
    spacings = {"PixelSpacing": source.pixel_spacing, "ImagerPixelSpacing": source.imager_pixel_spacing}
    for keyword, spacing in spacings.items():
        if spacing is not None:
            setattr(dataset, keyword, [format_number_as_ds(value / scale) for value in spacing])
    for keyword in _TYPE_2:
        if keyword not in dataset:
            setattr(dataset, keyword, None)
    # Image Pixel
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = image.shape
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.PixelRepresentation = 0
    dataset.PixelData = np.ascontiguousarray(image).tobytes()
    dataset["PixelData"].VR = "OB"
    # Part 10 file meta (PS3.10 7.1)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(implementation_class_uid(uid_root))
    meta.ImplementationVersionName = f"XRAYSR_{__version__}"[:16]  # SH: 16 characters
    dataset.file_meta = meta
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def series_number(series_uid: str) -> int:
    """9000-9999, the same for every answer of a series: high, so that it sorts after the study's acquired series."""
    return 9000 + int(hashlib.sha256(series_uid.encode("ascii")).hexdigest(), 16) % 1000


def derivation_description(result: UpscaleResult, manifest: Manifest, note: str | None = None) -> str:
    """DerivationDescription (ST, 1024 characters): what made the image and that it is synthetic."""
    size = manifest.image.lr_size
    text = (
        f"xraysr {__version__}, model {manifest.model} {manifest.version} ({manifest.precision}): "
        f"{manifest.image.hr_size // size}x super-resolution of a {size}x{size} image, {result.describe()}"
        f"{'; ' + note if note else ''}. {DISCLAIMER}"
    )
    if len(text) > MAX_ST_LENGTH:
        raise ValueError(f"DerivationDescription of {len(text)} characters is over ST's {MAX_ST_LENGTH}: {text}")
    return text


def _values_of(dataset: Any, keyword: str) -> list[str]:
    """An element's values as text; none when it is absent, empty or unreadable."""
    try:
        return text_values(dataset.get(keyword))
    except DICOM_ERRORS:
        return []


def _first(dataset: Any, keyword: str) -> str:
    """The value of a single-valued element, or "" when it is absent or has several (a multi-valued UID is
    invalid, and picking one would guess)."""
    values = _values_of(dataset, keyword)
    return values[0] if len(values) == 1 else ""


def _spacing(dataset: Any, keyword: str) -> tuple[float, float] | None:
    """A spacing pair (row, column, in mm) when present and sensible; an absent or broken one is left out."""
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    try:
        pair = tuple(float(number) for number in value)
    except (TypeError, ValueError):
        return None
    if len(pair) != 2 or not all(np.isfinite(number) and number > 0 for number in pair):
        return None
    return pair[0], pair[1]
