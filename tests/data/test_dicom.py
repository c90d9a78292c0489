"""Tests for busgen_monai.data.dicom and busgen_monai.data.dicom_transforms.

Real files only: the ultrasound DICOM in ../shared/data/dicom (skipped with a reason when absent), the
samples pydicom ships (ultrasound and other modalities, for transfer-syntax coverage), the phantom PACS
export, and broken copies of them made in tmp.
"""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut, get_decoder
from pydicom.uid import JPEGLSLossless, MPEG4HP41

from busgen_monai.data.devices import default_vocabulary
from busgen_monai.data.dicom import (
    DicomRejectError,
    UltrasoundDicom,
    UltrasoundRegion,
    codestream_size,
    decoder_problem,
    detect_imaging_region,
    laterality_from_text,
    phi_strings,
    read_ultrasound,
    scrub,
    select_region,
    sniff_dicom,
)

warnings.filterwarnings("ignore", module="pydicom")


def _sample(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not available")
    return Path(path)


def _frames(path, **kw) -> list[np.ndarray]:
    return [f for _, f in UltrasoundDicom(path, **kw).frames()]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from busgen_monai.synthetic import pacs_export as pacs
    out = tmp_path_factory.mktemp("pacs")
    root = pacs.write_pacs_export(out, n_patients=4, seed=3)
    truth = json.loads((out / "ground_truth.json").read_text())
    return root, truth


# ------------------------------------------------------------------------------------------ recognition
@pytest.mark.realdata
def test_sniff_recognises_dicom_by_content(tmp_path, dicom_dir):
    assert sniff_dicom(dicom_dir / "us1_uncompressed.dcm") == "dicom"
    (tmp_path / "notes.dcm").write_bytes(b"not a dicom file at all\n" * 10)
    (tmp_path / "empty").write_bytes(b"")
    assert sniff_dicom(tmp_path / "notes.dcm") is None
    assert sniff_dicom(tmp_path / "empty") is None
    assert sniff_dicom(tmp_path / "missing") is None
    # no preamble: a data set written without the 128-byte header
    ds = pydicom.dcmread(dicom_dir / "us1_uncompressed.dcm")
    ds.preamble = None
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    raw = tmp_path / "IM0001"
    raw.write_bytes(buf.getvalue())
    assert raw.read_bytes()[128:132] != b"DICM" and sniff_dicom(raw) == "dicom-raw"
    frames = _frames(raw)
    assert len(frames) == 1 and frames[0].shape[-1] == 3
    assert sniff_dicom(_sample("ExplVR_BigEndNoMeta.dcm")) == "dicom-raw"  # big endian, no file meta


# ------------------------------------------------------------------------------------------ real files
@pytest.mark.realdata
def test_real_files_decode_crop_and_describe(dicom_dir):
    vocab = default_vocabulary()
    us = UltrasoundDicom(dicom_dir / "us1_uncompressed.dcm")
    frames = [f for _, f in us.frames()]
    assert len(frames) == 1 and frames[0].dtype == np.uint8 and frames[0].ndim == 3
    x0, y0, x1, y1 = us.crop.box
    assert us.crop.source == "detected" and us.crop.spacing_mm is None
    # the GE screen: text rows (institution name, ids, time) end near row 75, the image starts near row 105
    assert 95 <= y0 <= 115 and 320 <= y1 <= 345 and x0 <= 20 and x1 >= 620
    assert vocab.find_dicom(us.info.manufacturer, us.info.model) == "GE-LOGIQ-700"
    # the RLE copy decodes to the very same pixels
    assert np.array_equal(_frames(dicom_dir / "us1_rle.dcm")[0], frames[0])

    raw = UltrasoundDicom(dicom_dir / "us_doppler_8f_implicit_le_rgb.dcm")
    jpg = UltrasoundDicom(dicom_dir / "us_doppler_8f_jpeg_baseline_fragmented.dcm")
    for u in (raw, jpg):
        assert u.n_frames == 8 and u.crop.source == "regions" and u.crop.box == (0, 16, 320, 218)
        assert u.crop.spacing_mm == pytest.approx((2.29375, 2.29375), rel=1e-6)  # 0.229 cm, |negative delta|
    a, b = _frames(raw.path), _frames(jpg.path)
    assert len(a) == len(b) == 8 and a[0].shape == (202, 320, 3)
    # the YBR_FULL JPEG converts to the same colours as the RGB original, up to JPEG loss
    assert all(np.abs(x.astype(int) - y).mean() < 6 for x, y in zip(a, b))

    pal = UltrasoundDicom(dicom_dir / "us_palette_11f_rle.dcm")
    frames = [f for _, f in pal.frames()]
    assert len(frames) == 11 and frames[0].ndim == 3
    full = pydicom.dcmread(pal.path)
    x0, y0, x1, y1 = pal.crop.box
    expected = (apply_color_lut(full.pixel_array[0], full) >> 8).astype(np.uint8)[y0:y1, x0:x1]
    if pal.crop.mask is not None:
        expected = np.where(pal.crop.mask[..., None], expected, 0)
    assert np.array_equal(frames[0], expected)
    # the ECG trace (bottom) and the "ID:/DOB:" text (top left) are outside the crop
    assert y1 < 340 and x0 > 150


# ------------------------------------------------------------------------------------------ pydicom samples
def test_pydicom_ultrasound_samples():
    ybr = UltrasoundDicom(_sample("examples_ybr_color.dcm"))  # 30 frames, JPEG baseline, YBR_FULL_422
    frames = [f for _, f in ybr.frames()]
    assert len(frames) == 30 and frames[0].ndim == 3 and frames[0].dtype == np.uint8
    # its region sequence was not updated when the image was resized: ignored, detection used instead
    assert ybr.crop.source == "detected" and any("outside" in w for w in ybr.crop.warnings)
    pal = _frames(_sample("examples_palette.dcm"))
    assert len(pal) == 1 and pal[0].ndim == 3 and pal[0].max() > 100
    rgb = _frames(_sample("examples_rgb_color.dcm"))[0]
    j2k = _frames(_sample("examples_jpeg2k.dcm"), region="none")[0]
    big = _frames(_sample("ExplVR_BigEnd.dcm"), region="none")[0]  # explicit VR big endian
    assert rgb.ndim == j2k.ndim == big.ndim == 3 and big.shape == (60, 80, 3)
    with pytest.raises(DicomRejectError, match="too small") as err:  # a thumbnail cannot be cropped safely
        _frames(_sample("ExplVR_BigEnd.dcm"))
    assert err.value.reason == "too_small"


@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_expb.dcm"])
def test_lossless_transfer_syntaxes_give_identical_frames(name):
    """The same 16-bit image in six encodings -> the same 8-bit output (window from the header)."""
    reference = _frames(_sample("MR_small.dcm"), region="none")[0]
    assert reference.dtype == np.uint8 and reference.max() == 255
    assert np.array_equal(_frames(_sample(name), region="none")[0], reference)


@pytest.mark.parametrize("name,channels", [
    ("JPEGLSNearLossless_08.dcm", 1), ("JPEGLSNearLossless_16.dcm", 1), ("JPGExtended.dcm", 1),
    ("JPEG2000.dcm", 1), ("SC_rgb_jpeg_dcmtk.dcm", 3), ("SC_rgb_rle.dcm", 3), ("SC_rgb_jls_lossy_line.dcm", 3),
    ("GDCMJ2K_TextGBR.dcm", 3), ("SC_rgb_rle_16bit.dcm", 3), ("SC_rgb_rle_32bit_2frame.dcm", 3),
    ("image_dfl.dcm", 1), ("liver_1frame.dcm", 1), ("rtdose_rle.dcm", 1),
])
def test_other_encodings_decode_to_8_bit(name, channels):
    frames = _frames(_sample(name), region="none")
    assert frames and all(f.dtype == np.uint8 for f in frames)
    assert (frames[0].ndim == 3) == (channels == 3)
    assert frames[0].max() > frames[0].min()  # not a blank conversion


_HUFF_BITS = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]  # JPEG Annex K.3 DC luminance table
_HUFF_VALS = list(range(12))


def _encode_jpeg_lossless(img: np.ndarray) -> bytes:
    """8-bit grey -> JPEG lossless codestream (process 14, first-order prediction): a test encoder, since no
    installed package writes lossless JPEG."""
    codes, code, k = {}, 0, 0
    for length, count in enumerate(_HUFF_BITS, start=1):
        for _ in range(count):
            codes[_HUFF_VALS[k]] = format(code, f"0{length}b")
            code, k = code + 1, k + 1
        code <<= 1
    img = np.asarray(img, dtype=np.int32)
    h, w = img.shape
    pred = np.empty_like(img)
    pred[0, 0] = 128
    pred[0, 1:], pred[1:, 0], pred[1:, 1:] = img[0, :-1], img[:-1, 0], img[1:, :-1]
    diff = (img - pred).ravel()
    ssss = np.where(diff == 0, 0, np.floor(np.log2(np.maximum(np.abs(diff), 1))).astype(int) + 1)
    extra = np.where(diff >= 0, diff, diff + (1 << ssss) - 1)
    bits = "".join(codes[s] + (format(e, f"0{s}b") if s else "") for s, e in zip(ssss.tolist(), extra.tolist()))
    bits += "1" * (-len(bits) % 8)
    data = bytearray()
    for i in range(0, len(bits), 8):
        data.append(int(bits[i:i + 8], 2))
        if data[-1] == 0xFF:
            data.append(0)  # byte stuffing
    sof = b"\xff\xc3\x00\x0b\x08" + h.to_bytes(2, "big") + w.to_bytes(2, "big") + b"\x01\x01\x11\x00"
    dht = b"\xff\xc4" + (31).to_bytes(2, "big") + b"\x00" + bytes(_HUFF_BITS) + bytes(_HUFF_VALS)
    sos = b"\xff\xda\x00\x08\x01\x01\x00\x01\x00\x00"
    return b"\xff\xd8" + sof + dht + sos + bytes(data) + b"\xff\xd9"


@pytest.mark.parametrize("tsyntax", ["1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"])
def test_jpeg_lossless_cine(export, tmp_path, tsyntax):
    from pydicom.encaps import encapsulate

    root, truth = export
    f = next(f for f in truth["files"] if f["kind"] == "cine" and f["photometric"] == "MONOCHROME2")
    ds = pydicom.dcmread(root / f["path"])
    frames = ds.pixel_array[:3]
    ds.PixelData = encapsulate([_encode_jpeg_lossless(fr) for fr in frames])
    ds.NumberOfFrames = 3
    ds.file_meta.TransferSyntaxUID = tsyntax
    ds.save_as(tmp_path / "lossless.dcm")
    ours = _frames(tmp_path / "lossless.dcm")
    x0, y0, x1, y1 = f["region_box"]
    assert len(ours) == 3 and all(np.array_equal(o, fr[y0:y1 + 1, x0:x1 + 1]) for o, fr in zip(ours, frames))


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(_sample("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    m2 = _frames(_sample("MR_small.dcm"), region="none")[0]
    assert np.array_equal(_frames(tmp_path / "m1.dcm", region="none")[0], 255 - m2)


def _pydicom_frames(path, **kw) -> list[np.ndarray]:
    """The same reader with the memory-mapped native path switched off (every frame through pydicom)."""
    us = UltrasoundDicom(path, **kw)
    us._native = False
    return [f for _, f in us.frames()]


def test_native_memory_map_equals_pydicom_decode(tmp_path, dicom_dir):
    """8-bit native files are read through a copy-on-write memory map: same frames as pydicom's decoder for
    grey (MONOCHROME1/2), RGB, palette and implicit VR cines; planar colour, 16 bit, big endian and short pixel
    data stay on pydicom; handed-out frames never write to the file."""
    rgb = pydicom.dcmread(dicom_dir / "us_doppler_8f_implicit_le_rgb.dcm")
    cases = {"implicit_rgb": dicom_dir / "us_doppler_8f_implicit_le_rgb.dcm",
             "palette": _sample("examples_palette.dcm"), "rgb": _sample("examples_rgb_color.dcm")}
    grey = rgb.pixel_array.max(axis=-1).astype(np.uint8)  # (8, H, W)
    for pi, name in (("MONOCHROME2", "m2"), ("MONOCHROME1", "m1")):
        ds = pydicom.dcmread(cases["implicit_rgb"])  # (Dataset.copy is shallow: elements are shared)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelData = 1, pi, grey.tobytes()
        if "PlanarConfiguration" in ds:
            del ds.PlanarConfiguration
        ds.save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
        cases[name] = tmp_path / f"{name}.dcm"
    planar = pydicom.dcmread(cases["implicit_rgb"])
    planar.PlanarConfiguration = 1
    planar.PixelData = np.ascontiguousarray(rgb.pixel_array.transpose(0, 3, 1, 2)).tobytes()
    planar.save_as(tmp_path / "planar.dcm", enforce_file_format=True)
    for name, path in cases.items():
        us = UltrasoundDicom(path, region="none")
        assert us._native_frames() is not None, name
        ours, ref = _frames(path), _pydicom_frames(path)
        assert len(ours) == len(ref) == us.n_frames and all(np.array_equal(a, b) for a, b in zip(ours, ref)), name
        full = [f for _, f in UltrasoundDicom(path, region="none").frames()]
        assert all(np.array_equal(a, b) for a, b in zip(full, _pydicom_frames(path, region="none"))), name
    assert np.array_equal(_frames(cases["m1"], region="none")[3], 255 - _frames(cases["m2"], region="none")[3])
    before = (tmp_path / "m2.dcm").read_bytes()
    frames = [f for _, f in UltrasoundDicom(tmp_path / "m2.dcm", region="none").frames()]
    frames[0][:] = 7  # writable, private
    assert (tmp_path / "m2.dcm").read_bytes() == before and frames[1].flags.owndata and frames[1][0, 0] != 7
    for path in (tmp_path / "planar.dcm", _sample("MR_small_bigendian.dcm"), _sample("MR_small.dcm")):
        assert UltrasoundDicom(path, region="none")._native_frames() is None, path.name
    assert np.array_equal(_frames(tmp_path / "planar.dcm", region="none")[2], _frames(cases["implicit_rgb"],
                                                                                   region="none")[2])
    short = pydicom.dcmread(cases["implicit_rgb"])
    short.PixelData = rgb.PixelData[: len(rgb.PixelData) // 2]
    short.save_as(tmp_path / "short.dcm", enforce_file_format=True)
    with pytest.raises(DicomRejectError):
        UltrasoundDicom(tmp_path / "short.dcm")._native_frames() or _frames(tmp_path / "short.dcm")


def test_16_bit_window_rules(tmp_path):
    ds = pydicom.dcmread(_sample("MR_small.dcm"))
    arr = ds.pixel_array.astype(float)
    with_window = _frames(_sample("MR_small.dcm"), region="none")[0]
    lo, hi = 600 - 0.5 - 799.5, 600 - 0.5 + 799.5  # WindowCenter 600, WindowWidth 1600 (linear DICOM window)
    expected = np.clip((arr - lo) * 255 / (hi - lo), 0, 255).astype(np.uint8)
    assert np.abs(with_window.astype(int) - expected).max() <= 1
    del ds.WindowCenter, ds.WindowWidth
    ds.save_as(tmp_path / "nowindow.dcm")
    robust = _frames(tmp_path / "nowindow.dcm", region="none")[0]
    assert robust.min() == 0 and robust.max() == 255  # 0.5 / 99.5 percentile window
    order = np.argsort(arr.ravel(), kind="stable")
    assert np.all(np.diff(robust.ravel()[order].astype(int)) >= 0)  # monotonic in the stored value


def test_ybr_full_422_native_becomes_rgb():
    path = _sample("SC_ybr_full_422_uncompressed.dcm")
    out = _frames(path, region="none")[0]
    ds = pydicom.dcmread(path)
    assert np.array_equal(out, ds.pixel_array)  # pydicom converts YBR_FULL_422 to RGB
    assert out.shape == (ds.Rows, ds.Columns, 3)


# ------------------------------------------------------------------------------------------ regions
def test_select_region_prefers_2d_tissue_then_largest():
    regions = [
        UltrasoundRegion(0, 0, 300, 300, spatial_format=1, data_type=2),  # 2-D but colour flow, larger
        UltrasoundRegion(10, 20, 110, 120, spatial_format=1, data_type=1, spacing_mm=(0.1, 0.1)),
        UltrasoundRegion(10, 20, 210, 220, spatial_format=1, data_type=1, spacing_mm=(0.2, 0.2)),
        UltrasoundRegion(0, 250, 300, 300, spatial_format=3, data_type=1),  # spectral, not 2-D
    ]
    best, warning = select_region(regions, 300, 300)
    assert warning is None and best.box() == (10, 20, 210, 220) and best.spacing_mm == (0.2, 0.2)
    best, _ = select_region(regions[:1] + regions[3:], 300, 300)
    assert best.box() == (0, 0, 300, 300)  # no tissue region: the largest 2-D one
    assert select_region(regions[3:], 300, 300) == (None, None)
    best, warning = select_region([UltrasoundRegion(0, 0, 640, 480, 1, 1)], 240, 320)
    assert best is None and "outside" in warning


def _text_band(width: int, height: int, lines, fill: int = 0) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.new("L", (width, height), fill)
    draw = ImageDraw.Draw(im)
    for y, text in lines:
        draw.text((4, y), text, fill=255)
    return np.asarray(im)


@pytest.mark.parametrize("gap", [0, 3, 12])
@pytest.mark.parametrize("fill", [0, 40])
def test_detection_removes_burned_in_text(gap, fill):
    from busgen_monai.synthetic.phantom import generate_case

    tissue = generate_case(5, "malignant", "PhantomMed-L12", (128, 160)).image
    h, w = tissue.shape
    canvas = np.zeros((240, 320), np.uint8)
    band = _text_band(320, 30, [(2, "DOE^JANE  MRN123456  DOB 19700101"), (15, "NORTHWICK BREAST CLINIC")], fill)
    canvas[:30] = band
    top, left = 30 + gap, 70
    canvas[top:top + h, left:left + w] = tissue
    canvas[top + h + 6:top + h + 20] = _text_band(320, 14, [(1, "L12 12MHz  DR60   F03/12")])
    canvas[top:top + 60, 250:316] = _text_band(66, 60, [(0, "GAIN 60"), (12, "DR 60"), (24, "FR 25"), (36, "D 4cm")])
    found = detect_imaging_region(canvas)
    assert found is not None
    x0, y0, x1, y1 = found[0]
    assert abs(x0 - left) <= 2 and abs(x1 - (left + w)) <= 2 and abs(y1 - (top + h)) <= 2
    assert top - 3 <= y0 <= top + 2  # never reaches the text lines of the band (rows 2..26)
    assert y0 >= 27


def test_detection_on_sector_image_blanks_corners():
    from busgen_monai.synthetic.phantom import generate_case

    fan = generate_case(2, "benign", "PhantomMed-C5", (128, 160)).image  # curvilinear: black outside the fan
    canvas = np.zeros((220, 300), np.uint8)
    canvas[50:178, 70:230] = fan
    canvas[52:60, 72:120] = _text_band(48, 8, [(-2, "ID 42")])  # text in the empty top-left corner
    box, mask = detect_imaging_region(canvas)
    x0, y0, x1, y1 = box
    crop = np.where(mask, canvas[y0:y1, x0:x1], 0)
    assert crop.shape == mask.shape and not mask.all()
    assert crop[:10, :40].max() == 0 or (y0 > 60)  # the corner text is gone
    ys, xs = np.nonzero(fan > 40)
    # the opening that removes text rounds the fan's acute bottom corners off by at most its radius (6 px)
    assert x0 <= xs.min() + 70 + 8 and x1 >= xs.max() + 70 - 8 and y1 >= ys.max() + 50 - 2
    assert y0 <= ys.min() + 50 + 2


def test_no_imaging_region_in_text_only_frame():
    canvas = _text_band(300, 200, [(10 + 14 * i, f"REPORT LINE {i} BI-RADS 4A MASS") for i in range(10)])
    assert detect_imaging_region(canvas) is None
    assert detect_imaging_region(np.zeros((100, 100), np.uint8)) is None


def test_phantom_detection_matches_regions(export):
    root, truth = export
    for f in truth["files"]:
        if f["kind"] not in ("cine", "single") or f["device"] == "PhantomMed-C5":
            continue
        us = UltrasoundDicom(root / f["path"], region="detect")
        x0, y0, x1, y1 = f["region_box"]
        assert us.crop.box == (x0, y0, x1 + 1, y1 + 1), f["path"]


def test_phantom_frames_are_the_phantom(export):
    """Crop by the region sequence gives back exactly the phantom frames the export was made from."""
    from busgen_monai.synthetic.phantom import generate_case, generate_cine

    root, truth = export
    h, w = truth["image_size"]
    checked = set()
    for f in truth["files"]:
        if f["kind"] not in ("cine", "single") or f["transfer_syntax_name"] in checked:
            continue
        checked.add(f["transfer_syntax_name"])
        us = UltrasoundDicom(root / f["path"])
        x0, y0, x1, y1 = f["region_box"]
        assert us.crop.box == (x0, y0, x1 + 1, y1 + 1) and us.crop.source == "regions"
        frames = [fr for _, fr in us.frames()]
        assert len(frames) == f["n_frames"]
        if f["kind"] == "cine":
            ref = [c.image for c in generate_cine(f["phantom_seed"], f["pathology"], f["device"], (h, w),
                                                  f["n_frames"])]
        else:
            ref = [generate_case(f["phantom_seed"], f["pathology"], f["device"], (h, w)).image]
        assert all(np.array_equal(a, b) for a, b in zip(frames, ref))
        assert us.info.laterality == f["laterality"]
        assert default_vocabulary().find_dicom(us.info.manufacturer, us.info.model) == f["device"]
        assert us.info.probe and us.info.sop_hash.startswith("IMG-")
    assert {"explicit", "rle", "implicit"} <= checked


# ------------------------------------------------------------------------------------------ bad inputs
def _reason(path, **kw) -> str:
    with pytest.raises(DicomRejectError) as err:
        UltrasoundDicom(path, **kw)
        list(UltrasoundDicom(path, **kw).frames())
    return err.value.reason


@pytest.mark.realdata
def test_broken_files_give_clear_reasons(tmp_path, dicom_dir):
    still, cine = dicom_dir / "us1_uncompressed.dcm", dicom_dir / "us_doppler_8f_implicit_le_rgb.dcm"
    jpg = dicom_dir / "us_doppler_8f_jpeg_baseline_fragmented.dcm"
    data = still.read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(data[: len(data) // 2])
    assert _reason(tmp_path / "truncated.dcm") == "truncated"
    ds = pydicom.dcmread(still)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    assert _reason(tmp_path / "nopix.dcm") == "no_pixel_data"
    for name, src, frames in (("more.dcm", cine, 12), ("fewer.dcm", cine, 4), ("more_jpeg.dcm", jpg, 12)):
        ds = pydicom.dcmread(src)
        ds.NumberOfFrames = frames
        ds.save_as(tmp_path / name)
        with pytest.raises(DicomRejectError, match="NumberOfFrames") as err:
            UltrasoundDicom(tmp_path / name)
        assert err.value.reason == "bad_geometry"
    ds = pydicom.dcmread(still)
    ds.Rows = ds.Columns = 60000
    ds.save_as(tmp_path / "absurd.dcm")
    with pytest.raises(DicomRejectError, match="60000"):
        UltrasoundDicom(tmp_path / "absurd.dcm")
    ds = pydicom.dcmread(jpg)
    ds.Rows, ds.Columns = 2000, 3000
    ds.save_as(tmp_path / "absurd_jpeg.dcm")
    with pytest.raises(DicomRejectError, match="compressed first frame is 240 x 320"):
        UltrasoundDicom(tmp_path / "absurd_jpeg.dcm")
    ds = pydicom.dcmread(still)
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    ds.save_as(tmp_path / "unknown_ts.dcm")
    with pytest.raises(DicomRejectError, match="unsupported transfer syntax 1.2.3.4.5.6.7") as err:
        UltrasoundDicom(tmp_path / "unknown_ts.dcm")
    assert err.value.reason == "unsupported_transfer_syntax"
    ds = pydicom.dcmread(jpg)
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.save_as(tmp_path / "video.dcm")
    with pytest.raises(DicomRejectError, match="ffmpeg"):
        UltrasoundDicom(tmp_path / "video.dcm")
    (tmp_path / "text.dcm").write_text("PATIENT REPORT\n" * 30)
    assert _reason(tmp_path / "text.dcm") == "not_dicom"


def test_missing_decoder_plugin_names_the_package():
    decoder = get_decoder(JPEGLSLossless)
    removed = dict(decoder._available)  # pydicom's registry: label -> decoding function
    # whichever plugins are installed (pylibjpeg; pyjpegls comes with highdicom): restored as they were registered
    paths = {label: (fn.__module__, fn.__name__) for label, fn in removed.items()}
    assert decoder_problem(JPEGLSLossless) is None
    try:
        for label in removed:
            decoder.remove_plugin(label)
        message = decoder_problem(JPEGLSLossless)
        assert "pip install pylibjpeg pylibjpeg-libjpeg" in message and "JPEG-LS" in message
        with pytest.raises(DicomRejectError, match="pylibjpeg-libjpeg") as err:
            UltrasoundDicom(_sample("MR_small_jpeg_ls_lossless.dcm"))
        assert err.value.reason == "unsupported_transfer_syntax"
    finally:
        for label in removed:
            decoder.add_plugin(label, paths[label])
    assert decoder_problem(JPEGLSLossless) is None


@pytest.mark.realdata
def test_codestream_size_reads_jpeg_and_j2k_headers(dicom_dir):
    from pydicom.encaps import generate_fragments

    for name, size in (("us_doppler_8f_jpeg_baseline_fragmented.dcm", (240, 320)),):
        ds = pydicom.dcmread(dicom_dir / name)
        first = next(generate_fragments(ds.PixelData[8 + int.from_bytes(ds.PixelData[4:8], "little"):]))
        assert codestream_size(first[:4096]) == size
    ds = pydicom.dcmread(_sample("MR_small_jp2klossless.dcm"))
    frag = next(generate_fragments(ds.PixelData[8 + int.from_bytes(ds.PixelData[4:8], "little"):]))
    assert codestream_size(frag[:4096]) == (64, 64)
    assert codestream_size(b"\x00\x01garbage") is None


# ------------------------------------------------------------------------------------------ metadata helpers
def test_laterality_phi_and_scrub(export):
    assert laterality_from_text("US LEFT BREAST 2 O'CLOCK") == "L"
    assert laterality_from_text("R BREAST CINE") == "R"
    assert laterality_from_text("BILATERAL BREAST, LEFT AND RIGHT") == ""
    assert laterality_from_text("BREAST") == ""
    root, truth = export
    f = next(f for f in truth["files"] if f["kind"] == "cine")
    ds = pydicom.dcmread(root / f["path"], stop_before_pixels=True)
    phi = phi_strings(ds)
    patient = truth["patients"][f["patient_index"]]["phi"]
    for key in ("PatientName", "PatientID", "AccessionNumber", "InstitutionName"):
        assert patient[key] in phi
    assert "1" not in phi and "BREAST" not in phi  # a StudyID "1", a word of an institution: too generic
    assert scrub(f"file of {patient['PatientID']} at {patient['InstitutionName'].lower()}", phi) == \
        "file of [redacted] at [redacted]"
    us = UltrasoundDicom(root / f["path"])
    text = json.dumps(us.info.to_dict())
    assert not any(p.lower() in text.lower() for p in truth["phi_strings"])
    assert f["sop_instance_uid"] not in text and f["study_instance_uid"] not in text
    assert "PixelData" not in us.ds  # the header read never loads the pixel data


def test_stride_and_indices(export):
    root, truth = export
    f = max((f for f in truth["files"] if f["kind"] == "cine"), key=lambda f: f["n_frames"])
    us = UltrasoundDicom(root / f["path"])
    assert [i for i, _ in us.frames(stride=3)] == list(range(0, f["n_frames"], 3))
    assert [i for i, _ in us.frames(indices=[4, 1])] == [4, 1]
    arr, meta = read_ultrasound(root / f["path"], frames=2)
    assert arr.ndim == 2 and meta["frame_indices"] == [2] and meta["spacing_mm"][0] > 0


# ------------------------------------------------------------------------------------------ MONAI reader
def test_monai_reader_layout_and_metadata(export, tmp_path):
    from monai.transforms import LoadImage, LoadImaged

    from busgen_monai.data.dicom_transforms import BUSDicomReader

    root, truth = export
    grey = next(f for f in truth["files"] if f["kind"] == "cine" and f["photometric"] == "MONOCHROME2")
    colour = next(f for f in truth["files"] if f["kind"] == "cine" and f["photometric"] == "RGB")
    h, w = truth["image_size"]
    reader = BUSDicomReader(frames=0)
    assert reader.verify_suffix(str(root / grey["path"]))  # no extension: recognised by content
    (tmp_path / "README").write_text("not dicom")
    assert not reader.verify_suffix(str(tmp_path / "README"))
    img = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(str(root / grey["path"]))
    assert tuple(img.shape) == (1, w, h)  # (C, W, H) like PILReader
    assert img.meta["device"] == grey["device"] and img.meta["laterality"] == grey["laterality"]
    assert float(img.pixdim[0]) == pytest.approx(img.meta["spacing_mm"][0]) and img.meta["spacing_mm"][0] > 0
    ref = UltrasoundDicom(root / grey["path"])
    first = next(ref.frames(indices=[0]))[1]
    assert np.array_equal(img[0].numpy(), first.T)
    # the dotted path a bundle config uses; every frame: (C, W, H, T)
    cine = LoadImage(reader="busgen_monai.data.dicom_transforms.BUSDicomReader", image_only=True,
                     ensure_channel_first=True)(str(root / grey["path"]))
    assert tuple(cine.shape) == (1, w, h, grey["n_frames"])
    d = LoadImaged(keys="image", reader="busgen_monai.data.dicom_transforms.BUSDicomReader", frames=0,
                   ensure_channel_first=True)({"image": str(root / colour["path"])})
    assert tuple(d["image"].shape) == (3, w, h)
    meta_text = json.dumps({k: str(v) for k, v in d["image"].meta.items() if k != "filename_or_obj"})
    assert not any(p.lower() in meta_text.lower() for p in truth["phi_strings"])
    assert colour["sop_instance_uid"] not in meta_text
    two = LoadImage(reader=BUSDicomReader(frames=1), image_only=True)([str(root / grey["path"])] * 2)
    assert tuple(two.shape) == (2, w, h)
    with pytest.raises(ValueError, match="stride"):
        BUSDicomReader(stride=0)
    shutil.rmtree(tmp_path)
