"""The UIDs xraysr writes into a DICOM answer (PS3.5 chapter 9 and annex B), and what "one series per model run" means.

Root. ``XRAYSR_DICOM_UID_ROOT`` is the site's registered UID root (e.g. an organisation's ``1.2.826.0.1.3680043.10.x``);
every UID is then ``<root>.<digits>``, 64 characters at most (PS3.5 9.1). Left unset, UIDs are UUID-derived,
``2.25.<a UUID as an integer>`` (PS3.5 B.2, ITU-T X.667): globally unique with nothing registered, so the default
is safe to use; a site root only makes the UIDs recognisably the site's.

Model run. A run is one process serving one model version: `xraysr serve` from start to stop, one invocation of
`xraysr upscale`. A DICOM series belongs to exactly one study, so a run cannot put every answer in one series;
instead its SeriesInstanceUID is derived from (the run, the model version, the input's StudyInstanceUID): every
answer of one running server for one study lands in one series, another study's answers in another, and a restart
or a different model starts new series. SOP Instance UIDs are new for every answer.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Sequence

from xraysr.service import __version__

UUID_ROOT = "2.25"
# PS3.5 9.1: a UID is at most 64 characters. A root of at most 40 leaves 23 digits (about 76 bits) to tell the
# UIDs made under it apart.
MAX_UID_ROOT_LENGTH = 40
_UID_ROOT = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")  # PS3.5 9.1: digits, no leading zeros; X.660 arcs 0-2
# Names the UUID-derived UIDs this software derives (uuid5); a fixed random value, never to change.
_XRAYSR_NAMESPACE = uuid.UUID("8f4b8c3e-3d55-4a57-9a7c-2d1f6b0e7a41")
# Drawn once per process: a process serves one model for its life, so it is the model run.
_RUN_TOKEN = secrets.token_hex(16)


def check_uid_root(root: str) -> str:
    """``root`` without a trailing dot, or a ValueError saying what a UID root must be."""
    root = root.strip().removesuffix(".")
    if root == UUID_ROOT:
        raise ValueError(
            "2.25 is the UUID arc, not a root: leave the UID root unset for UUID-derived UIDs (2.25.<UUID>)"
        )
    if not _UID_ROOT.match(root):
        raise ValueError(
            "not a DICOM UID root: dot-separated numbers without leading zeros, starting with 0, 1 or 2 (PS3.5 9.1), "
            "e.g. your organisation's registered root"
        )
    if len(root) > MAX_UID_ROOT_LENGTH:
        raise ValueError(
            f"a UID root of {len(root)} characters is too long: at most {MAX_UID_ROOT_LENGTH}, so that the UIDs made "
            "under it keep 23 digits of their own within DICOM's 64"
        )
    return root


def make_uid(root: str | None, derived_from: Sequence[str] | None = None) -> str:
    """A new UID under ``root`` (None: UUID-derived, 2.25.…): random, or, given ``derived_from``, the same UID for
    the same strings."""
    if root is None:
        value = uuid.uuid4() if derived_from is None else uuid.uuid5(_XRAYSR_NAMESPACE, "\n".join(derived_from))
        return f"{UUID_ROOT}.{value.int}"
    from pydicom.uid import generate_uid  # pydicom loads with the first DICOM, not with the settings

    entropy = None if derived_from is None else ["\n".join(derived_from)]
    return str(generate_uid(prefix=f"{root}.", entropy_srcs=entropy))


def series_instance_uid(root: str | None, model_version: str, study_instance_uid: str) -> str:
    """This run's series for that study (the module's docstring says why not one series per run)."""
    return make_uid(root, ("series", _RUN_TOKEN, model_version, study_instance_uid))


def implementation_class_uid(root: str | None) -> str:
    """PS3.7 D.3.3.2: names this implementation, so the same for every file of one xraysr version."""
    return make_uid(root, ("implementation", "xraysr", __version__))
