"""Triage results as DICOM objects that any viewer can show.

For each triaged radiograph two objects go back into the source study:

* a Secondary Capture (highdicom ``SCImage``) of the heatmap overlay, in its own series
  whose Series Description is ``AI TRIAGE - NOT FOR DIAGNOSIS`` (the banner is also
  burnt into the picture);
* a Comprehensive 3D SR holding a TID 1500 Measurement Report: one TID 1501 measurement
  group with the triage call (present/absent at the model's threshold), the probability, the
  threshold and the algorithm (TID 4019: model name and version), in the style of IHE AI
  Results, referencing the source image by its SOP Instance UID. For a single-label model the
  group is the model's finding (pneumonia); for a multi-label model it is "any finding" (the lead
  finding's probability and threshold), followed by one group per finding with the finding's
  own code (SNOMED CT where one exists), its probability, its threshold and present/absent as the
  result's label lists it. When the result has a heatmap, the triage group is a TID 1410 planar
  ROI group instead, whose region is a SCOORD point on the source image where the heatmap peaks,
  so any viewer can place the finding.

A refused input (lateral view, blank image, out of distribution, unreadable pixels) gets
only the SR: the finding is "indeterminate", there is no probability, and the reason is
given as text.

UIDs are new (``2.25.<uuid>``) but derived deterministically from the source instance
and the model, so storing the results of the same instance twice cannot duplicate them
in a PACS (the second store is the same SOP instance).
"""

from __future__ import annotations

import datetime as _dt
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, Comprehensive3DSRStorage, ExplicitVRLittleEndian

from cxrtriage.about import DISCLAIMER, __version__
from cxrtriage.contract import Kind, Prediction
from cxrtriage.contract.decision import RULES
from cxrtriage.explain.overlay import BANNER, overlay_for

SERIES_DESCRIPTION = BANNER
MANUFACTURER = "cxr-triage"
SC_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
DEFAULT_ORIENTATION = ("L", "F")

# Source names such as "Anonymous" are copied as they are; highdicom's advice about them is noise here.
warnings.filterwarnings("ignore", message=r'The string ".*" is unlikely to represent', category=UserWarning)

_NAMESPACE = uuid.UUID("6f1c2a4e-3b55-4c1e-9a7d-2f0e8b9c1d42")

PNEUMONIA = hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
THRESHOLD = hd.sr.CodedConcept("122411", "DCM", "Threshold Value")
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
ABSENT = hd.sr.CodedConcept("272519000", "SCT", "Absent")
INDETERMINATE = hd.sr.CodedConcept("82334004", "SCT", "Indeterminate")
CHEST_XRAY = hd.sr.CodedConcept("399208008", "SCT", "Plain X-ray of chest")
ANY_FINDING = hd.sr.CodedConcept("404684003", "SCT", "Clinical finding")  # multi-label models: any finding
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")

# The findings of the NIH ChestX-ray14 set, coded: SNOMED CT where a concept exists, DICOM's
# "Infiltrate" (CID 6104), and a local code (99CXRT) for pleural thickening.
FINDING_CODES: dict[str, hd.sr.CodedConcept] = {
    "Atelectasis": hd.sr.CodedConcept("46621007", "SCT", "Atelectasis"),
    "Cardiomegaly": hd.sr.CodedConcept("8186001", "SCT", "Cardiomegaly"),
    "Effusion": hd.sr.CodedConcept("60046008", "SCT", "Pleural effusion"),
    "Infiltration": hd.sr.CodedConcept("112121", "DCM", "Infiltrate"),
    "Mass": hd.sr.CodedConcept("4147007", "SCT", "Mass"),
    "Nodule": hd.sr.CodedConcept("27925004", "SCT", "Nodule"),
    "Pneumonia": PNEUMONIA,
    "Pneumothorax": hd.sr.CodedConcept("36118008", "SCT", "Pneumothorax"),
    "Consolidation": hd.sr.CodedConcept("95436008", "SCT", "Consolidation of lung"),
    "Edema": hd.sr.CodedConcept("19242006", "SCT", "Pulmonary edema"),
    "Emphysema": hd.sr.CodedConcept("87433001", "SCT", "Pulmonary emphysema"),
    "Fibrosis": hd.sr.CodedConcept("51615001", "SCT", "Pulmonary fibrosis"),
    "Pleural_Thickening": hd.sr.CodedConcept("PLTHICK", "99CXRT", "Pleural thickening"),
    "Hernia": hd.sr.CodedConcept("414403008", "SCT", "Hernia of abdominal cavity"),
}
TRIAGE_TRACKING = "AI triage: "
FINDING_TRACKING = "AI finding: "

_REFUSED_PREFIX = "Not assessed: "
_PRIORITY_PREFIX = "Triage priority: "
_LABEL_PREFIX = "Model label: "
_ROUTED_PREFIX = "Routed by: "
_LEAD_PREFIX = "Lead finding: "


def derived_uid(*parts: str) -> UID:
    """A valid UID (``2.25.<128-bit>``) that depends only on ``parts``."""
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, '|'.join(parts)).int}")


@dataclass
class TriageResults:
    """The DICOM objects written back for one source instance."""

    prediction: Prediction
    sr: Dataset
    sc: Dataset | None = None

    @property
    def datasets(self) -> list[Dataset]:
        return [d for d in (self.sc, self.sr) if d is not None]

    @property
    def refused(self) -> bool:
        return not self.prediction.ok


def is_own_output(ds: Any) -> bool:
    """True for objects this package wrote (so watchers never triage their own results)."""
    get = ds.get if hasattr(ds, "get") else (lambda k, d=None: getattr(ds, k, d))
    return str(get("Manufacturer", "") or "") == MANUFACTURER or \
        str(get("SeriesDescription", "") or "") == SERIES_DESCRIPTION


def _now() -> tuple[str, str]:
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _model_key(pred: Prediction) -> str:
    return f"{pred.model.get('name', '?')}|{pred.model.get('version', '?')}"


def _copy_charset(src: Dataset, dst: Dataset) -> None:
    if "SpecificCharacterSet" in src:
        dst.SpecificCharacterSet = src.SpecificCharacterSet


def _common(src: Dataset, dst: Dataset) -> None:
    """Series-level labelling and provenance shared by the SC and the SR."""
    _copy_charset(src, dst)
    dst.SeriesDescription = SERIES_DESCRIPTION
    date, time = _now()
    dst.SeriesDate, dst.SeriesTime = date, time
    dst.ContentDate, dst.ContentTime = date, time
    dst.SoftwareVersions = f"cxr-triage {__version__}"
    for kw in ("StudyDescription", "IssuerOfPatientID"):
        if kw in src and kw not in dst:
            setattr(dst, kw, src.get(kw))


def build_sc(src: Dataset, pixels: np.ndarray, pred: Prediction) -> Dataset:
    """Secondary Capture of the heatmap overlay, new series in the source's study."""
    rgb = np.asarray(overlay_for(pixels, pred), dtype=np.uint8)
    key = _model_key(pred)
    orientation = tuple(src.get("PatientOrientation") or ()) or DEFAULT_ORIENTATION
    if len(orientation) != 2:
        orientation = DEFAULT_ORIENTATION
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=src,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=derived_uid(str(src.StudyInstanceUID), key, "sc-series"),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=derived_uid(str(src.SOPInstanceUID), key, "sc"),
        instance_number=int(src.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        patient_orientation=orientation,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    _common(src, sc)
    sc.ImageComments = f"{BANNER}. {DISCLAIMER}"
    sc.DerivationDescription = (f"heatmap of model {pred.model.get('name')} {pred.model.get('version')} "
                                f"over the source radiograph")[:1024]
    sc.BurnedInAnnotation = "NO"
    ref = Dataset()
    ref.ReferencedSOPClassUID = src.SOPClassUID
    ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc


def _text(value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=COMMENT, value=value[:1024],
                                 relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _device_context(pred: Prediction) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid("device", _model_key(pred)),
        name=f"cxr-triage {pred.model.get('name', '')}"[:64],
        manufacturer_name=MANUFACTURER,
        model_name=str(pred.model.get("name", ""))[:64],
        serial_number=str(pred.model.get("version", ""))[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device))


def _group(src: Dataset, key: str, tracking: str, finding: hd.sr.CodedConcept, value: hd.sr.CodedConcept,
           algorithm: hd.sr.AlgorithmIdentification, probability: float | None = None,
           threshold: float | None = None, point: tuple[float, float] | None = None,
           ) -> hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """One measurement group: a finding, present/absent/indeterminate, probability and threshold.
    TID 1501 (image-level) without ``point``; with it, TID 1410 whose region is a SCOORD POINT at
    ``point`` (column, row) on the source image, so any viewer can place the finding."""
    measurements = []
    if probability is not None:
        measurements.append(hd.sr.Measurement(name=PROBABILITY, value=float(probability), unit=NO_UNITS))
    if threshold is not None:
        measurements.append(hd.sr.Measurement(name=THRESHOLD, value=float(threshold), unit=NO_UNITS))
    tracking_id = hd.sr.TrackingIdentifier(
        uid=derived_uid(str(src.SOPInstanceUID), key, "tracking",
                        *(() if tracking.startswith(TRIAGE_TRACKING) else (tracking,))),
        identifier=tracking)
    evaluation = hd.sr.QualitativeEvaluation(finding, value)
    if point is not None:
        region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POINT, graphic_data=np.array([point]),
                                   source_image=hd.sr.SourceImageForRegion(src.SOPClassUID, src.SOPInstanceUID))
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking_id, referenced_region=region, finding_type=finding, algorithm_id=algorithm,
            measurements=measurements or None, qualitative_evaluations=[evaluation])
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking_id,
        finding_type=finding,
        algorithm_id=algorithm,
        measurements=measurements or None,
        qualitative_evaluations=[evaluation],
        source_images=[hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=src.SOPClassUID, referenced_sop_instance_uid=src.SOPInstanceUID)],
    )


def heatmap_peak(src: Dataset, heatmap: np.ndarray | None) -> tuple[float, float] | None:
    """Where the model looked most, as (column, row) on the source image (pixel centres, 1-based
    as a SCOORD's image coordinates); None without a heatmap or image size."""
    rows, cols = int(src.get("Rows") or 0), int(src.get("Columns") or 0)
    if heatmap is None or not rows or not cols or not np.size(heatmap):
        return None
    h = np.asarray(heatmap, dtype=float)
    i, j = np.unravel_index(int(np.argmax(h)), h.shape)
    return float((j + 0.5) * cols / h.shape[1]), float((i + 0.5) * rows / h.shape[0])


def is_multilabel(pred: Prediction) -> bool:
    """Whether ``pred`` was decided by the multi-label rule (one threshold per finding)."""
    return pred.rule == RULES[Kind.MULTILABEL]


@lru_cache(maxsize=16)
def _bundled_label_thresholds(name: str, version: str) -> dict[str, float] | None:
    """Per-finding thresholds of a bundled model of that name and version (None if there is none)."""
    from cxrtriage.infer.bundle import bundled_models, load_spec

    if name not in bundled_models():
        return None
    spec = load_spec(name)
    if spec.version != version:
        return None
    return {c: spec.decision.label_threshold(c) for c in spec.classes}


def _finding_groups(src: Dataset, pred: Prediction, key: str, algorithm: hd.sr.AlgorithmIdentification,
                    thresholds: Mapping[str, float] | None) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """One group per finding of a multi-label result, in the model's class order. Present/absent is
    read from the result's label (the findings it lists), never decided again here."""
    if thresholds is None:
        thresholds = _bundled_label_thresholds(str(pred.model.get("name", "")), str(pred.model.get("version", "")))
    listed = set(str(pred.label).split("|")) if pred.flagged else set()
    groups = []
    for name, p in pred.probabilities.items():
        code = FINDING_CODES.get(name) or hd.sr.CodedConcept(name[:16], "99CXRT", name.replace("_", " ")[:64])
        t = (thresholds or {}).get(name)
        if t is None and name == pred.finding:
            t = pred.threshold
        groups.append(_group(src, key, FINDING_TRACKING + name, code, PRESENT if name in listed else ABSENT,
                             algorithm, p, t))
    return groups


def build_sr(src: Dataset, pred: Prediction, reason: str | None = None, fast: bool = True,
             label_thresholds: Mapping[str, float] | None = None) -> Dataset:
    """TID 1500 Measurement Report for ``pred``; a refusal (no score) when it is not ``ok``.

    A multi-label result gets the "any finding" group and one group per finding (thresholds from
    ``label_thresholds``, else from the bundled model of the result's name and version).
    The content tree is highdicom's ``MeasurementReport``. ``fast=False`` wraps it with
    ``highdicom.sr.Comprehensive3DSR`` (the reference); the default builds the same
    document directly, about twice as fast.
    """
    key = _model_key(pred)
    threshold = pred.threshold
    params = [f"threshold={threshold:.6f}"] if threshold is not None else None
    algorithm = hd.sr.AlgorithmIdentification(
        name=str(pred.model.get("name", "unknown")), version=str(pred.model.get("version", "unknown")),
        parameters=params, manufacturer=MANUFACTURER)
    texts: list[str] = []
    multi = is_multilabel(pred)
    pneumonia = not multi and ({"pneumonia", "bacterial"} & set(pred.probabilities) or not pred.ok)
    finding, what = (PNEUMONIA, "pneumonia") if pneumonia else (ANY_FINDING, "any finding")
    if pred.ok and pred.score is not None:
        # the prediction's own call (its label), never decided again here
        groups = [_group(src, key, TRIAGE_TRACKING + what, finding, PRESENT if pred.flagged else ABSENT,
                         algorithm, pred.score, threshold, heatmap_peak(src, pred.heatmap))]
        if multi:
            groups += _finding_groups(src, pred, key, algorithm, label_thresholds)
            texts.append(f"{_LEAD_PREFIX}{pred.finding}")
        texts += [_PRIORITY_PREFIX + pred.priority, _LABEL_PREFIX + str(pred.label)]
    else:
        groups = [_group(src, key, TRIAGE_TRACKING + what, finding, INDETERMINATE, algorithm)]
        why = reason or pred.gate.get("reason") or pred.error or "refused by the quality gate"
        texts.append(_REFUSED_PREFIX + str(why))
    if pred.gate.get("warning"):
        texts.append("Warning: " + str(pred.gate["warning"]))
    if pred.model.get("routed_by"):
        texts.append(f"{_ROUTED_PREFIX}{pred.model['routed_by']} (model {pred.model.get('name')})")
    texts.append(DISCLAIMER)
    report = hd.sr.MeasurementReport(
        observation_context=_device_context(pred),
        procedure_reported=CHEST_XRAY,
        imaging_measurements=groups,
    )
    # TID 1500 row 12: free-text qualitative evaluations (refusal reason, priority, disclaimer).
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence([_text(t) for t in texts])
    report[0].ContentSequence.append(container)
    series_uid = derived_uid(str(src.StudyInstanceUID), key, "sr-series")
    sop_uid = derived_uid(str(src.SOPInstanceUID), key, "sr")
    number = int(src.get("InstanceNumber") or 1)
    if fast:
        sr = _sr_document(src, report[0], series_uid, sop_uid, number)
    else:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[src], content=report[0], series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
            sop_instance_uid=sop_uid, instance_number=number, manufacturer=MANUFACTURER,
            is_complete=True, is_final=False, is_verified=False)
    _common(src, sr)
    return sr


@lru_cache(maxsize=64)
def _patient_study_keywords(sop_class_uid: str) -> tuple[str, ...]:
    """Root-level attributes of the Patient and Study modules of the source's IOD (as highdicom copies them)."""
    from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map

    iod = get_sop_class_iod_map().get(sop_class_uid)
    if iod is None:
        return _FALLBACK_PATIENT_STUDY
    attrs = get_module_attribute_map()
    out: list[str] = []
    for module in get_iod_module_map()[iod]:
        if module["ie"] in ("Patient", "Study"):
            out += [str(a["keyword"]) for a in attrs[module["key"]] if len(a["path"]) == 0]
    return tuple(dict.fromkeys(out))


_FALLBACK_PATIENT_STUDY = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                           "OtherPatientIDsSequence", "PatientAge", "PatientSize", "PatientWeight",
                           "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                           "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription")
_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _sr_document(src: Dataset, root: Dataset, series_uid: str, sop_uid: str, number: int) -> Dataset:
    """The Comprehensive 3D SR document around a highdicom TID 1500 root item.

    Produces the same attributes as ``highdicom.sr.Comprehensive3DSR`` for a single source
    image in the same study (checked by the tests), without its generic deep copy and
    content-tree search, which cost most of the time per instance.
    """
    now = _dt.datetime.now()
    sr = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = Comprehensive3DSRStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"CXRTRIAGE{__version__}"[:16]
    sr.preamble = b"\x00" * 128
    sr.file_meta = meta
    if "SpecificCharacterSet" in src:
        sr.SpecificCharacterSet = src.SpecificCharacterSet
    sr.InstanceCreationDate = now.strftime("%Y%m%d")
    sr.InstanceCreationTime = now.strftime("%H%M%S.%f")
    sr.SOPClassUID = Comprehensive3DSRStorage
    sr.SOPInstanceUID = sop_uid
    for kw in _TYPE2_PATIENT_STUDY:
        setattr(sr, kw, src.get(kw, "") or "")
    sr.StudyInstanceUID = src.StudyInstanceUID
    for kw in _patient_study_keywords(str(src.SOPClassUID)):
        if kw in src:
            sr.add(src[kw])
    sr.Modality = "SR"
    sr.SeriesInstanceUID = series_uid
    sr.SeriesNumber = SR_SERIES_NUMBER
    sr.InstanceNumber = number
    sr.Manufacturer = MANUFACTURER
    sr.ReferencedPerformedProcedureStepSequence = []
    for elem in root:
        sr[elem.tag] = elem
    sr.PerformedProcedureCodeSequence = []
    sop = Dataset()
    sop.ReferencedSOPClassUID = src.SOPClassUID
    sop.ReferencedSOPInstanceUID = src.SOPInstanceUID
    series = Dataset()
    series.ReferencedSOPSequence = [sop]
    series.SeriesInstanceUID = src.SeriesInstanceUID
    study = Dataset()
    study.ReferencedSeriesSequence = [series]
    study.StudyInstanceUID = src.StudyInstanceUID
    sr.CurrentRequestedProcedureEvidenceSequence = [study]
    sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag = "COMPLETE", "UNVERIFIED", "PRELIMINARY"
    equipment: list[Dataset] = []
    try:
        equipment.append(hd.ContributingEquipment.for_image_acquisition(src))
    except Exception:  # noqa: BLE001 - best-effort: the acquisition entry is optional
        pass
    equipment.append(hd.ContributingEquipment.for_highdicom())
    sr.ContributingEquipmentSequence = equipment
    return sr


def build_results(src: Dataset, pixels: np.ndarray | None, pred: Prediction,
                  reason: str | None = None) -> TriageResults:
    """SC + SR for an accepted prediction, SR only for a refusal or unreadable pixels."""
    sr = build_sr(src, pred, reason)
    sc = build_sc(src, pixels, pred) if pred.ok and pixels is not None else None
    return TriageResults(prediction=pred, sr=sr, sc=sc)


# -- reading results back ------------------------------------------------------------------

def _walk(items: Any) -> Iterator[Dataset]:
    for item in items or ():
        yield item
        yield from _walk(item.get("ContentSequence"))


def _code(item: Dataset, attr: str) -> tuple[str, str] | None:
    seq = item.get(attr)
    if not seq:
        return None
    return str(seq[0].CodeValue), str(seq[0].CodingSchemeDesignator)


@dataclass
class FindingResult:
    """One finding's measurement group of a multi-label triage SR."""

    code: tuple[str, str]           # (code value, coding scheme)
    meaning: str
    probability: float | None = None
    threshold: float | None = None
    finding: str | None = None      # present / absent / indeterminate


@dataclass
class ResultSummary:
    """What a triage SR says, decoded with plain pydicom. ``triage`` names the overall group ("pneumonia"
    or "any finding"); ``findings`` holds the per-finding groups of a multi-label model, by class name."""

    sop_instance_uid: str
    study_instance_uid: str
    source_sop_instance_uids: list[str] = field(default_factory=list)
    probability: float | None = None
    threshold: float | None = None
    finding: str | None = None
    refused: bool = False
    reason: str | None = None
    priority: str | None = None
    label: str | None = None
    routed_by: str | None = None  # "age" or "gate" when the bundled models were routed
    model_name: str | None = None
    model_version: str | None = None
    texts: list[str] = field(default_factory=list)
    point: tuple[float, float] | None = None  # (column, row) of the triage group's SCOORD: where it looked most
    triage: str | None = None
    lead_finding: str | None = None
    findings: dict[str, FindingResult] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


_MEANINGS = {PRESENT.value: "present", ABSENT.value: "absent", INDETERMINATE.value: "indeterminate"}


def _read_group(group: Dataset) -> tuple[str | None, FindingResult | None]:
    """(tracking identifier, the group's finding, values) of one TID 1501 measurement group."""
    tracking, out = None, None
    values: dict[str, Any] = {}
    for item in _walk(group.get("ContentSequence")):
        vt, name = item.get("ValueType"), _code(item, "ConceptNameCodeSequence")
        if vt == "TEXT" and name == ("112039", "DCM"):
            tracking = str(item.get("TextValue", ""))
        elif vt == "NUM" and item.get("MeasuredValueSequence"):
            value = float(item.MeasuredValueSequence[0].NumericValue)
            if name == (PROBABILITY.value, "DCM"):
                values["probability"] = value
            elif name == (THRESHOLD.value, "DCM"):
                values["threshold"] = value
        elif vt == "CODE" and name is not None:
            val = _code(item, "ConceptCodeSequence")
            if val is not None and val[0] in _MEANINGS:
                out = FindingResult(name, str(item.ConceptNameCodeSequence[0].CodeMeaning),
                                    finding=_MEANINGS[val[0]])
    if out is not None:
        out.probability, out.threshold = values.get("probability"), values.get("threshold")
    return tracking, out


def _read_texts(ds: Dataset, out: ResultSummary) -> None:
    for item in _walk(ds.get("ContentSequence")):
        vt, name = item.get("ValueType"), _code(item, "ConceptNameCodeSequence")
        if vt == "TEXT":
            text = str(item.get("TextValue", ""))
            if name == ("111001", "DCM"):
                out.model_name = text
            elif name == ("111003", "DCM"):
                out.model_version = text
            elif name == (COMMENT.value, "DCM"):
                out.texts.append(text)
                for prefix, attr in ((_PRIORITY_PREFIX, "priority"), (_LABEL_PREFIX, "label"),
                                     (_LEAD_PREFIX, "lead_finding")):
                    if text.startswith(prefix):
                        setattr(out, attr, text[len(prefix):])
                if text.startswith(_REFUSED_PREFIX):
                    out.refused, out.reason = True, text[len(_REFUSED_PREFIX):]
                elif text.startswith(_ROUTED_PREFIX):
                    out.routed_by = text[len(_ROUTED_PREFIX):].split(" ", 1)[0]
        elif vt == "SCOORD" and out.point is None and len(item.get("GraphicData") or ()) >= 2:
            out.point = (float(item.GraphicData[0]), float(item.GraphicData[1]))
        elif vt == "IMAGE" and item.get("ReferencedSOPSequence"):
            uid = str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            if uid not in out.source_sop_instance_uids:
                out.source_sop_instance_uids.append(uid)


def read_result_sr(ds: Dataset) -> ResultSummary:
    """Decode a triage SR (ours, or any TID 1500 report using the same codes), group by group: the
    triage group fills ``probability``/``threshold``/``finding``, finding groups fill ``findings``."""
    out = ResultSummary(sop_instance_uid=str(ds.SOPInstanceUID), study_instance_uid=str(ds.StudyInstanceUID))
    for item in _walk(ds.get("ContentSequence")):
        if item.get("ValueType") != "CONTAINER" or _code(item, "ConceptNameCodeSequence") != ("125007", "DCM"):
            continue
        tracking, group = _read_group(item)
        if group is None:
            continue
        if tracking and tracking.startswith(FINDING_TRACKING):
            out.findings[tracking[len(FINDING_TRACKING):]] = group
        elif out.finding is None and (tracking is None or tracking.startswith(TRIAGE_TRACKING)
                                      or group.code in ((PNEUMONIA.value, "SCT"), (ANY_FINDING.value, "SCT"))):
            out.triage = tracking[len(TRIAGE_TRACKING):] if tracking else group.meaning
            out.probability, out.threshold, out.finding = group.probability, group.threshold, group.finding
    _read_texts(ds, out)
    if out.finding == "indeterminate" and out.probability is None:
        out.refused = True
    return out
