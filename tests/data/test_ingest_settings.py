"""Tests for busgen_monai.data.ingest.settings / .cli / .write: the options are declared once (IngestOptions) and
the function, its signature and the command line all follow that declaration; frame files are written atomically."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
from PIL import Image

from busgen_monai.data.ingest import IngestError, IngestOptions, ingest, ingest_main
from busgen_monai.data.ingest.cli import _parser, options_from_args
from busgen_monai.data.ingest.write import _remove_outputs, _write_nifti, _write_png


def _plain(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def test_command_line_defaults_are_the_function_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("BUSGEN_INGEST_SALT", raising=False)
    cli = options_from_args(_parser().parse_args([str(tmp_path), str(tmp_path / "out")]))
    differ = {f.name for f in dataclasses.fields(IngestOptions)
              if _plain(getattr(cli, f.name)) != _plain(getattr(IngestOptions(), f.name))}
    assert differ == {"file_timeout"}  # the command line guards against hung decoders by default (documented)
    assert cli.file_timeout == 600.0 and IngestOptions().file_timeout is None


def test_command_line_values_parse_into_the_options(tmp_path, monkeypatch):
    monkeypatch.setenv("BUSGEN_INGEST_SALT", "from-env")
    args = _parser().parse_args([str(tmp_path), str(tmp_path / "o"), "--dedupe-threshold", "off", "--split",
                                 "0.5,0.25,0.25", "--modalities", "us,ot", "--file-timeout", "0", "--no-progress",
                                 "--format", "nifti", "--stride", "3"])
    opts = options_from_args(args)
    assert opts.dedupe_threshold is None and list(opts.split_fractions) == [0.5, 0.25, 0.25]
    assert list(opts.modalities) == ["US", "OT"] and opts.file_timeout is None and opts.progress is False
    assert opts.image_format == "nifti" and opts.stride == 3 and opts.salt == "from-env"
    assert options_from_args(_parser().parse_args([str(tmp_path), "o", "--modalities", "any"])).modalities is None
    with pytest.raises(ValueError, match="--split must be three numbers"):
        options_from_args(_parser().parse_args([str(tmp_path), "o", "--split", "0.7,x"]))
    assert ingest_main([str(tmp_path), str(tmp_path / "o"), "--dedupe-threshold", "lots"]) == 1


def test_every_option_is_a_keyword_of_ingest_and_documented():
    params = inspect.signature(ingest).parameters
    for f in dataclasses.fields(IngestOptions):
        assert params[f.name].kind is inspect.Parameter.KEYWORD_ONLY and params[f.name].default == f.default
        assert f"{f.name}: " in ingest.__doc__ and f"{f.name}: " in IngestOptions.__doc__
    flags = {a.dest for a in _parser()._actions}
    on_cli = {f.name for f in dataclasses.fields(IngestOptions) if f.metadata["cli"] is not None}
    assert on_cli <= flags and {"zero_level", "isolate", "max_attempts"}.isdisjoint(flags)


def test_bad_options_fail_before_anything_is_written(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(TypeError, match="bogus"):
        ingest(tmp_path / "src", tmp_path / "out", bogus=1)
    with pytest.raises(IngestError, match="stride must be >= 1"):
        ingest(tmp_path / "src", tmp_path / "out", IngestOptions(stride=0))
    with pytest.raises(IngestError, match="color must be"):
        ingest(tmp_path / "src", tmp_path / "out", IngestOptions(), color="sepia")
    assert not (tmp_path / "out").exists()


def test_frames_are_written_whole_and_leftover_temporaries_removed(tmp_path):
    rel = "images/PAT-1/STU-1/SER-1"
    folder = tmp_path / rel
    folder.mkdir(parents=True)
    frame = (np.arange(48 * 40) % 251).astype(np.uint8).reshape(48, 40)
    _write_png(folder / "IMG-a_f00000.png", frame, 1)
    _write_nifti(folder / "IMG-a_f00001.nii.gz", frame, (0.1, 0.2))
    assert np.array_equal(np.asarray(Image.open(folder / "IMG-a_f00000.png")), frame)
    import nibabel as nib

    img = nib.load(folder / "IMG-a_f00001.nii.gz")
    assert np.array_equal(np.asarray(img.dataobj).T, frame) and np.allclose(img.header.get_zooms()[:2], (0.1, 0.2))
    assert sorted(p.name for p in folder.iterdir()) == ["IMG-a_f00000.png", "IMG-a_f00001.nii.gz"]
    # a killed run leaves temporaries (the atomic writer's and older versions' names): removed, frames kept
    (folder / ".IMG-a_f00002.png.x1y2.tmp").write_bytes(b"partial")
    (folder / ".tmp-123-IMG-a_f00003.png").write_bytes(b"partial")
    (folder / ".IMG-b_f00000.png.z9.tmp").write_bytes(b"another image's, still being written")
    _remove_outputs(tmp_path, rel, "IMG-a", temporary_only=True)
    assert sorted(p.name for p in folder.iterdir()) == [".IMG-b_f00000.png.z9.tmp", "IMG-a_f00000.png",
                                                         "IMG-a_f00001.nii.gz"]
    _remove_outputs(tmp_path, rel, "IMG-a")
    assert [p.name for p in folder.iterdir()] == [".IMG-b_f00000.png.z9.tmp"]
