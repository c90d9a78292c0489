"""A fake, PACS-style DICOM export of phantom breast-ultrasound studies, with ground truth.

:func:`write_pacs_export` writes what a hospital's PACS export (a CD or a folder drop) typically
looks like, so that DICOM ingestion can be developed and tested without real data:

- a nested folder tree ``out_dir/export/...`` with uninformative folder and file names: a
  ``DICOMDIR``-indexed part (``DICOM/Pxxxxxx/Sxxxxxx/Rxxxxxx/Ixxxxx``, files without extension) and
  loose files outside the index (``<UID>.dcm`` in a folder named after the patient - a PHI trap -
  and extension-less files in hash-named folders), plus a non-DICOM ``README.TXT``;
- per patient, one "US BREAST BILATERAL" study with a multi-frame US cine of the lesion side
  (Ultrasound Multi-frame Image Storage), a single-frame US image of the lesion side (Ultrasound
  Image Storage) and a cine of the contralateral (normal) side. Frames come from
  :func:`busgen_monai.synthetic.phantom.generate_cine` and are placed on a larger "screen" with a burned-in
  header (fake patient name, MRN, date, institution), a grey bar and depth ticks; one
  ``SequenceOfUltrasoundRegions`` item gives the exact image rectangle, so cropping is required;
- instances an ingester must reject: a Secondary Capture "report screenshot" (text on black, Modality
  still ``US``), an Enhanced SR report (no pixels), a biopsy-guidance cine (separate study whose
  StudyDescription/PerformedProcedureStepDescription say ``BIOPSY``; a needle is drawn in) and a
  single-frame image that is more than 95 % zero pixels (probe in air);
- a mix of transfer syntaxes: Explicit VR Little Endian (most), Implicit VR Little Endian and RLE
  Lossless; greyscale devices are ``MONOCHROME2``, the tinted ``PhantomMed-T9`` is ``RGB``
  (PlanarConfiguration 0);
- fake but realistic PHI in PatientName, PatientID, PatientBirthDate, InstitutionName,
  ReferringPhysicianName, OperatorsName and AccessionNumber, unique per patient.

``out_dir/ground_truth.json`` (outside the DICOM tree) lists every instance: path relative to the
export root, SOP Instance UID, ``kind`` (``cine``, ``single``, ``sr``, ``secondary_capture``,
``biopsy``, ``mostly_zero``), expected ``decision`` (``keep`` / ``reject``) and ``reason`` keyword
(``sop_class``, ``biopsy``, ``mostly_zero``; ``None`` for keeps), frames, device, laterality, the
region box ``[x0, y0, x1, y1]`` (inclusive, as RegionLocationMin/Max), pathology, BI-RADS,
per-frame lesion boxes normalised to the *cropped* image, the transfer syntax, the fraction of zero
pixels, the phantom seed the pixels came from (``generate_cine(phantom_seed, pathology, device, size,
n_frames)`` / ``generate_case(...)`` reproduce the cropped frames of ``cine`` / ``single`` kinds
exactly), and the PHI strings (per patient and all together) so tests can assert none leaks.

Everything is deterministic by ``seed`` (UIDs are hashed from it), and an export of 4 patients takes
about a second.

The DICOM encoding (data sets, transfer syntaxes, SR, DICOMDIR) is in :mod:`.pacs_dicom`.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import Any, Sequence

import numpy as np

from busgen_monai.utils.io import atomic_write_json

from .device_styles import PHANTOM_DEVICES, DeviceStyle, get_device_style
from .pacs_dicom import (
    _base_dataset,
    _encode,
    _Patient,
    _set_pixels,
    _sr_dataset,
    _uid,
    _us_tags,
    _write_dicomdir,
    _write_ds,
)
from .phantom import generate_case, generate_cine

__all__ = [
    "US_MULTIFRAME_IMAGE_STORAGE",
    "US_IMAGE_STORAGE",
    "SECONDARY_CAPTURE_IMAGE_STORAGE",
    "ENHANCED_SR_STORAGE",
    "EXPORT_KINDS",
    "write_pacs_export",
]

US_MULTIFRAME_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
ENHANCED_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.22"

EXPORT_KINDS = ("cine", "single", "sr", "secondary_capture", "biopsy", "mostly_zero")
"""Instance kinds listed in ``ground_truth.json``."""

_REJECT_REASON = {"sr": "sop_class", "secondary_capture": "sop_class", "biopsy": "biopsy",
                  "mostly_zero": "mostly_zero"}
_TS_CYCLE = ("explicit", "explicit", "rle", "implicit")
_HEADER_ROWS = 28

_SURNAMES = ("DOE", "ROE", "QUILLFEATHER", "VANTERPOOL", "BRISKETT", "HOLLOWMERE", "MARLOWE",
             "KESTRELL", "THORNBURY", "ASHGROVE", "PENDERWICK", "LARKSPUR")
_GIVEN = ("JANE", "MARYANN", "LUCIA", "ROSALIND", "EMMELINE", "IRIS", "NORA", "OPHELIA", "GRETA",
          "MAGDA", "SELMA", "VIOLA")
_CITIES = ("NORTHWICK", "SALTMARSH", "EASTBROOK", "GLENFARROW", "WESTHAVEN", "DUNMORROW")
_DOCTORS = ("HOUSEMAN^GREGORY", "CARVEN^PHILIPPA", "OAKSHOTT^BENEDICT", "TREMAINE^HILDA",
            "FAIRWEATHER^OTTO", "BALLANTYNE^RUTH")


def _make_patients(n: int, seed: int, devices: list[str]) -> list[_Patient]:
    rng = np.random.default_rng([int(seed), 901])
    used: set[str] = set()
    patients = []

    def unique(make):
        for _ in range(1000):
            v = make()
            if v not in used:
                used.add(v)
                return v
        raise RuntimeError("could not draw a unique fake identifier")

    for p in range(n):
        name = unique(lambda: f"{_SURNAMES[rng.integers(len(_SURNAMES))]}^"
                              f"{_GIVEN[rng.integers(len(_GIVEN))]}{int(rng.integers(2, 99))}")
        mrn = unique(lambda: f"MRN{int(rng.integers(100000, 999999))}")
        birth = unique(lambda: f"{int(rng.integers(1940, 1986))}{int(rng.integers(1, 13)):02d}"
                               f"{int(rng.integers(1, 29)):02d}")
        inst = unique(lambda: f"{_CITIES[rng.integers(len(_CITIES))]} BREAST CLINIC {int(rng.integers(2, 99))}")
        ref = unique(lambda: f"{_DOCTORS[rng.integers(len(_DOCTORS))]}{int(rng.integers(2, 99))}")
        oper = unique(lambda: f"SONO^TECH{int(rng.integers(100, 999))}")
        acc = unique(lambda: f"ACC{int(rng.integers(1000000, 9999999))}")
        acc2 = unique(lambda: f"ACC{int(rng.integers(1000000, 9999999))}")
        study_date = f"{int(rng.integers(2019, 2024))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
        patients.append(_Patient(
            index=p,
            seed=int(np.random.SeedSequence([int(seed), p]).generate_state(1)[0]),
            device=get_device_style(devices[p % len(devices)]),
            pathology="benign" if p % 2 == 0 else "malignant",
            laterality="L" if rng.random() < 0.5 else "R",
            phi={"PatientName": name, "PatientID": mrn, "PatientBirthDate": birth,
                 "InstitutionName": inst, "ReferringPhysicianName": ref, "OperatorsName": oper,
                 "AccessionNumber": acc, "AccessionNumber2": acc2},
            study_date=study_date,
            uid_key=f"patient{p}",
        ))
    return patients


# ----------------------------------------------------------------------------------------------
# pixels: screen layout with burned-in text
# ----------------------------------------------------------------------------------------------


def _text_layer(shape: tuple[int, int], lines: Sequence[tuple[int, int, str, int]]) -> np.ndarray:
    """Grey uint8 layer with ``(x, y, text, value)`` drawn (PIL default font)."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(im)
    for x, y, text, value in lines:
        draw.text((x, y), text, fill=int(value))
    return np.asarray(im)


def _screen(
    frames: list[np.ndarray],
    canvas: tuple[int, int],
    origin: tuple[int, int],
    header: list[str],
    style: DeviceStyle,
    spacing_cm: float,
    counter: bool = True,
    header_fill: int = 32,
) -> np.ndarray:
    """Place frames on a screen (N, CH, CW[, 3]) with a header band, grey bar and depth ticks."""
    ch, cw = canvas
    x0, y0 = origin
    h, w = frames[0].shape[:2]
    base = np.zeros((ch, cw), dtype=np.uint8)
    base[:_HEADER_ROWS] = header_fill
    txt = _text_layer((ch, cw), [(4, 2 + 12 * i, line, 255) for i, line in enumerate(header[:2])]
                      + [(4, ch - 13, f"{style.model} {style.frequency_mhz:g}MHz  DR{style.dynamic_range_db:g}", 200)])
    base = np.maximum(base, txt)
    bar_x = cw - 12
    ramp = np.linspace(255, 8, h).astype(np.uint8)[:, None]
    base[y0 : y0 + h, bar_x : bar_x + 6] = ramp
    step = max(4, int(round(1.0 / spacing_cm)))  # one tick per cm
    for yy in range(y0, y0 + h, step):
        base[yy : yy + 2, max(0, x0 - 5) : max(0, x0 - 2)] = 220
    out = []
    for t, fr in enumerate(frames):
        scr = base.copy()
        if counter and len(frames) > 1:
            scr = np.maximum(scr, _text_layer((ch, cw), [(cw - 56, ch - 13, f"F{t + 1:02d}/{len(frames):02d}", 255)]))
        if fr.ndim == 3:
            scr = np.repeat(scr[..., None], 3, axis=2)
        scr[y0 : y0 + h, x0 : x0 + w] = fr
        out.append(scr)
    return np.stack(out)


def _draw_needle(frames: list[np.ndarray], rng: np.random.Generator, target: tuple[float, float]) -> None:
    """Draw a bright biopsy needle entering from the top corner and advancing toward ``target``."""
    h, w = frames[0].shape[:2]
    ty, tx = target
    sy, sx = 2.0, (2.0 if rng.random() < 0.5 else w - 3.0)
    n = len(frames)
    for t, fr in enumerate(frames):
        frac = 0.3 + 0.7 * (t + 1) / n
        ey, ex = sy + (ty - sy) * frac, sx + (tx - sx) * frac
        k = int(max(abs(ey - sy), abs(ex - sx))) + 1
        ys = np.clip(np.round(np.linspace(sy, ey, k)).astype(int), 0, h - 1)
        xs = np.clip(np.round(np.linspace(sx, ex, k)).astype(int), 0, w - 1)
        for dy in (0, 1):
            fr[np.clip(ys + dy, 0, h - 1), xs] = 255


# ----------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------


def write_pacs_export(
    out_dir: str | os.PathLike,
    n_patients: int = 4,
    seed: int = 0,
    size: tuple[int, int] = (128, 160),
    frames: tuple[int, int] = (6, 12),
    canvas: tuple[int, int] | None = None,
    devices: Sequence[str] | None = None,
    dicomdir: bool = True,
) -> pathlib.Path:
    """Write a fake PACS export of phantom breast-US studies and its ground truth.

    Patient ``p`` is scanned with ``devices[p % len(devices)]`` (all four phantom devices by
    default), is benign for even ``p`` and malignant for odd ``p``. The rejects are spread over the
    patients: secondary capture on patient ``0 % n``, SR on ``1 % n``, biopsy study on ``2 % n`` and
    the mostly-zero image on ``3 % n`` (so every export, even with one patient, has all of them).

    Args:
        out_dir: output folder; the DICOM tree goes to ``out_dir/export`` (the returned root) and the
            manifest to ``out_dir/ground_truth.json``. An existing ``export`` folder is replaced.
        n_patients: number of fake patients (>= 1).
        seed: seed for everything (pixels, PHI strings, UIDs, layout).
        size: (H, W) of the ultrasound image inside the screen.
        frames: inclusive (min, max) number of frames per cine.
        canvas: screen (rows, cols); default ``(H + 72, W + 96)`` (200 x 256 for the default size).
        devices: canonical phantom devices to cycle through (default: all four).
        dicomdir: write a ``DICOMDIR`` indexing the ``DICOM/...`` part of the tree.

    Returns:
        the export root ``out_dir/export``.

    Raises:
        ValueError: bad sizes, frame range, patient count or device name.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    h, w = int(size[0]), int(size[1])
    ch, cw = (h + 72, w + 96) if canvas is None else (int(canvas[0]), int(canvas[1]))
    if ch < h + _HEADER_ROWS + 20 or cw < w + 40:
        raise ValueError(f"canvas {(ch, cw)} too small for image size {(h, w)}: need at least "
                         f"({h + _HEADER_ROWS + 20}, {w + 40})")
    fmin, fmax = int(frames[0]), int(frames[1])
    if not 2 <= fmin <= fmax:
        raise ValueError(f"frames must be (min, max) with 2 <= min <= max, got {frames!r}")
    dev_names = list(PHANTOM_DEVICES) if devices is None else [get_device_style(d).name for d in devices]

    out = pathlib.Path(out_dir)
    root = out / "export"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = np.random.default_rng([int(seed), 902])
    patients = _make_patients(n_patients, seed, dev_names)

    def hexname(k: int) -> str:
        return "".join("0123456789ABCDEF"[int(v)] for v in rng.integers(0, 16, k))

    records: list[dict[str, Any]] = []
    managed: list[tuple[str, pathlib.Path]] = []
    ts_counter = [0]
    patient_dirs: dict[int, pathlib.Path] = {}
    study_dirs: dict[tuple[int, int], pathlib.Path] = {}

    def next_syntax() -> str:
        s = _TS_CYCLE[ts_counter[0] % len(_TS_CYCLE)]
        ts_counter[0] += 1
        return s

    def managed_path(p: int, st: int, se: int) -> pathlib.Path:
        # component lengths 5 + 7 + 7 + 7 + 6 keep the DICOMDIR File ID length of pydicom's layout
        if p not in patient_dirs:
            patient_dirs[p] = root / "DICOM" / ("P" + hexname(6))
        if (p, st) not in study_dirs:
            study_dirs[(p, st)] = patient_dirs[p] / ("S" + hexname(6))
        return study_dirs[(p, st)] / ("R" + hexname(6)) / ("I" + hexname(5))

    for pat in patients:
        style = pat.device
        dev_idx = list(PHANTOM_DEVICES).index(style.name) if style.name in PHANTOM_DEVICES else 0
        x0 = int(min(max(0, (cw - w) // 2 - 8 + 4 * dev_idx), cw - w - 16))
        y0 = int(max(_HEADER_ROWS + 2, min(_HEADER_ROWS + 4 + 3 * dev_idx, ch - h - 16)))
        region = (x0, y0, x0 + w - 1, y0 + h - 1)
        prng = np.random.default_rng([pat.seed, 903])
        other = "R" if pat.laterality == "L" else "L"
        studies = [
            {"index": 0, "uid": _uid(seed, pat.uid_key, "study0"), "time": "101500",
             "description": "US BREAST BILATERAL", "procedure": "US BREAST BILATERAL"},
            {"index": 1, "uid": _uid(seed, pat.uid_key, "study1"), "time": "143000",
             "description": f"US BREAST BIOPSY {'LEFT' if pat.laterality == 'L' else 'RIGHT'}",
             "procedure": "US GUIDED CORE NEEDLE BIOPSY"},
        ]
        header = [f"{pat.phi['PatientName']}  {pat.phi['PatientID']}  DOB {pat.phi['PatientBirthDate']}",
                  f"{pat.study_date}  {pat.phi['InstitutionName']}"]
        n_series = [0]
        case_birads = [None]

        def add(kind: str, study: dict, arr: np.ndarray | None, sop_class: str, laterality: str | None,
                pathology: str, frame_boxes: list, loose: str | None = None, birads: str | None = None,
                description: str = "", use_region: bool = True, modality: str = "US",
                phantom_seed: int | None = None) -> None:
            n_series[0] += 1
            series = {"uid": _uid(seed, pat.uid_key, "series", n_series[0]), "number": n_series[0],
                      "time": f"10{15 + n_series[0]:02d}00", "description": description, "modality": modality}
            sop_uid = _uid(seed, pat.uid_key, "sop", n_series[0])
            ds = _base_dataset(pat, sop_class, sop_uid, study, series, 1)
            multiframe = sop_class == US_MULTIFRAME_IMAGE_STORAGE
            syntax = "explicit"
            if arr is not None:
                _set_pixels(ds, arr, multiframe)
                if sop_class in (US_IMAGE_STORAGE, US_MULTIFRAME_IMAGE_STORAGE):
                    _us_tags(ds, style, laterality or pat.laterality, len(records) % 2 == 0,
                             region, spacing_cm)
                    ds.BurnedInAnnotation = "YES"
                else:
                    ds.ConversionType = "WSD"
                    ds.BurnedInAnnotation = "YES"
                    ds.ImageType = ["DERIVED", "SECONDARY"]
                if multiframe:
                    ds.FrameTime = f"{1000.0 / style.frame_rate:.2f}"
                    ds.CineRate = int(round(style.frame_rate))
                    ds.RecommendedDisplayFrameRate = int(round(style.frame_rate))
                    from pydicom.tag import Tag

                    ds.FrameIncrementPointer = Tag("FrameTime")
                syntax = next_syntax()
                _encode(ds, arr, syntax)
            else:
                _sr_dataset(ds, pat, birads or "")
            if loose is None:
                path = managed_path(pat.index, study["index"], n_series[0])
                managed.append((sop_uid, path))
            else:
                path = root / loose
            _write_ds(ds, path)
            zero = float((arr == 0).mean()) if arr is not None else None
            n_frames = 0 if arr is None else (int(arr.shape[0]) if multiframe else 1)
            records.append({
                "path": path.relative_to(root).as_posix(),
                "sop_instance_uid": sop_uid,
                "sop_class_uid": sop_class,
                "study_instance_uid": study["uid"],
                "series_instance_uid": series["uid"],
                "kind": kind,
                "decision": "reject" if kind in _REJECT_REASON else "keep",
                "reason": _REJECT_REASON.get(kind),
                "n_frames": n_frames,
                "device": style.name,
                "laterality": laterality,
                "pathology": pathology,
                "birads": birads,
                "region_box": list(region) if (arr is not None and use_region) else None,
                "frame_boxes": frame_boxes,
                "phantom_seed": phantom_seed,
                "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
                "transfer_syntax_name": syntax if arr is not None else "explicit",
                "photometric": str(ds.get("PhotometricInterpretation", "")) or None,
                "zero_fraction": zero,
                "in_dicomdir": loose is None and dicomdir,
                "patient_index": pat.index,
                "study_description": study["description"],
            })

        # 1) lesion-side cine
        n1 = int(prng.integers(fmin, fmax + 1))
        cine = generate_cine(pat.seed, pat.pathology, style.name, (h, w), n1)
        spacing_cm = float(cine[0].spacing[0])
        case_birads[0] = cine[0].birads
        add("cine", studies[0], _screen([c.image for c in cine], (ch, cw), (x0, y0), header, style, spacing_cm),
            US_MULTIFRAME_IMAGE_STORAGE, pat.laterality, pat.pathology, [c.boxes for c in cine],
            birads=cine[0].birads, description=f"{pat.laterality} BREAST CINE", phantom_seed=pat.seed)
        # 2) lesion-side still image
        still = generate_case(pat.seed, pat.pathology, style.name, (h, w))
        add("single", studies[0], _screen([still.image], (ch, cw), (x0, y0), header, style, spacing_cm)[0],
            US_IMAGE_STORAGE, pat.laterality, pat.pathology, [still.boxes], birads=still.birads,
            description=f"{pat.laterality} BREAST", phantom_seed=pat.seed)
        # 3) contralateral (normal) cine; loose ".dcm" file in a folder named after the patient for odd p
        n3 = int(prng.integers(fmin, fmax + 1))
        cine_n = generate_cine(pat.seed + 1, "normal", style.name, (h, w), n3)
        loose = None
        if pat.index % 2 == 1:
            loose = f"{pat.phi['PatientName'].replace('^', '_')}/{_uid(seed, pat.uid_key, 'sop', n_series[0] + 1)}.dcm"
        add("cine", studies[0], _screen([c.image for c in cine_n], (ch, cw), (x0, y0), header, style, spacing_cm),
            US_MULTIFRAME_IMAGE_STORAGE, other, "normal", [c.boxes for c in cine_n], loose=loose,
            birads="1", description=f"{other} BREAST CINE", phantom_seed=pat.seed + 1)

        # rejects
        if pat.index == 0 % n_patients:
            lines = [(8, 8, "BREAST ULTRASOUND REPORT", 255),
                     (8, 24, f"PATIENT: {pat.phi['PatientName']}   ID: {pat.phi['PatientID']}", 230),
                     (8, 38, f"DOB: {pat.phi['PatientBirthDate']}   ACC: {pat.phi['AccessionNumber']}", 230),
                     (8, 52, pat.phi["InstitutionName"], 230),
                     (8, 74, f"FINDINGS: {pat.pathology.upper()}-APPEARING MASS, {pat.laterality} BREAST", 200),
                     (8, 88, f"ASSESSMENT: BI-RADS {case_birads[0]}", 200),
                     (8, 110, f"REFERRING: {pat.phi['ReferringPhysicianName']}", 200)]
            add("secondary_capture", studies[0], _text_layer((ch, cw), lines), SECONDARY_CAPTURE_IMAGE_STORAGE,
                None, pat.pathology, [], use_region=False, description="REPORT SCREEN")
        if pat.index == 1 % n_patients:
            add("sr", studies[0], None, ENHANCED_SR_STORAGE, None, pat.pathology, [],
                loose=f"{hexname(8)}/{hexname(8)}/SR{pat.index:05d}", birads=case_birads[0],
                description="BREAST US REPORT", modality="SR")
        if pat.index == 2 % n_patients:
            nb = int(prng.integers(fmin, fmax + 1))
            bcine = generate_cine(pat.seed, pat.pathology, style.name, (h, w), nb, sweep=0.03)
            bframes = [c.image.copy() for c in bcine]
            m = bcine[-1].lesion_masks[0] if bcine[-1].lesion_masks else None
            target = tuple(np.argwhere(m).mean(axis=0)) if m is not None else (h / 2, w / 2)
            _draw_needle(bframes, prng, target)
            add("biopsy", studies[1], _screen(bframes, (ch, cw), (x0, y0), header, style, spacing_cm),
                US_MULTIFRAME_IMAGE_STORAGE, pat.laterality, pat.pathology, [c.boxes for c in bcine],
                birads=bcine[0].birads, description=f"{pat.laterality} BREAST BIOPSY", phantom_seed=pat.seed)
        if pat.index == 3 % n_patients:
            blank = np.zeros((h, w, 3) if style.is_color else (h, w), dtype=np.uint8)
            blank[1:3, w // 4 : 3 * w // 4] = 40  # faint ring-down of a probe in air
            scr = _screen([blank], (ch, cw), (x0, y0), header[:1], style, spacing_cm, header_fill=0)[0]
            add("mostly_zero", studies[0], scr, US_IMAGE_STORAGE, pat.laterality, "normal", [[]],
                description=f"{pat.laterality} BREAST")

    # non-DICOM noise a real export carries
    (root / "README.TXT").write_bytes(b"PACS EXPORT - OPEN DICOMDIR WITH A DICOM VIEWER\r\n")
    extra = [{"path": "README.TXT", "kind": "non_dicom"}]
    if dicomdir and managed:
        _write_dicomdir(root, managed, seed)
        extra.insert(0, {"path": "DICOMDIR", "kind": "dicomdir"})

    phi_all: list[str] = []
    for pat in patients:
        phi_all.extend(pat.phi.values())
        if pat.index % 2 == 1:
            phi_all.append(pat.phi["PatientName"].replace("^", "_"))
    manifest = {
        "description": "ground truth for busgen_monai.synthetic.pacs_export.write_pacs_export",
        "version": 1,
        "seed": int(seed),
        "n_patients": int(n_patients),
        "image_size": [h, w],
        "canvas": [ch, cw],
        "export_root": "export",
        "region_box_convention": "[x0, y0, x1, y1] inclusive (RegionLocationMin/Max); crop = [y0:y1+1, x0:x1+1]",
        "frame_boxes_convention": "per frame, list of [x1, y1, x2, y2] normalised to the cropped image",
        "files": records,
        "extra_files": extra,
        "patients": [
            {"index": p.index, "device": p.device.name, "pathology": p.pathology,
             "lesion_laterality": p.laterality, "phi": dict(p.phi)}
            for p in patients
        ],
        "phi_strings": phi_all,
    }
    atomic_write_json(out / "ground_truth.json", manifest, indent=2)
    return root
