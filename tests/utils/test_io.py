"""busgen_monai.utils.io: atomic writers (real files; a failure mid-write leaves no partial or temporary file)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from busgen_monai import utils
from busgen_monai.utils.io import (
    atomic_copy,
    atomic_open,
    atomic_save_figure,
    atomic_save_npz,
    atomic_save_png,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_hash,
    file_sha256,
    to_jsonable,
)


class Boom(RuntimeError):
    pass


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _usual_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _figure() -> Figure:
    fig = Figure(figsize=(2, 2), dpi=50)
    FigureCanvasAgg(fig)
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


def test_public_names_match_module():
    assert set(utils.__all__) == set(utils.io.__all__)
    for name in utils.__all__:
        assert getattr(utils, name) is getattr(utils.io, name)


def test_bytes_and_text_create_folders_replace_and_keep_usual_permissions(tmp_path):
    path = tmp_path / "a" / "b" / "x.bin"
    assert atomic_write_bytes(path, b"\x00\x01") == path
    assert path.read_bytes() == b"\x00\x01"
    atomic_write_text(path, "h\u00e9\n")  # replaces, UTF-8
    assert path.read_bytes() == "h\u00e9\n".encode()
    assert _mode(path) == _usual_mode()  # not mkstemp's 0600
    assert _listing(path.parent) == ["x.bin"]


def test_atomic_open_text_mode_and_bad_mode(tmp_path):
    path = tmp_path / "t.csv"
    with atomic_open(path, "w", newline="") as fh:
        fh.write("a,b\r\n1,\u00e9\r\n")
        assert not path.exists()  # nothing visible until the block ends
        assert len(_listing(tmp_path)) == 1 and _listing(tmp_path)[0].startswith(".t.csv.")
    assert path.read_bytes() == "a,b\r\n1,\u00e9\r\n".encode()
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "y", "ab"):
            pass
    assert _listing(tmp_path) == ["t.csv"]


def test_failure_mid_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")
    with pytest.raises(Boom):
        with atomic_open(path, "wb") as fh:
            fh.write(b"half of the new cont")
            raise Boom()
    assert path.read_text() == "old"
    assert _listing(tmp_path) == ["keep.txt"]
    new = tmp_path / "new.txt"
    with pytest.raises(KeyboardInterrupt):  # BaseException too (Ctrl-C)
        with atomic_open(new, "w") as fh:
            fh.write("partial")
            raise KeyboardInterrupt()
    assert _listing(tmp_path) == ["keep.txt"]


def test_write_is_fsynced_before_rename(tmp_path, monkeypatch):
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    atomic_write_bytes(tmp_path / "f", b"x")
    assert calls == ["fsync", "replace"]


def test_to_jsonable_numpy_paths_dataclasses_and_nonfinite(tmp_path):
    import dataclasses

    @dataclasses.dataclass
    class DC:
        a: int
        p: Path

    obj = {1: np.float32(0.5), "arr": np.arange(3), "b": np.bool_(True), "i": np.int64(7), "p": tmp_path / "x",
           "t": (np.nan, math.inf, 1.0), "dc": DC(2, Path("y"))}
    out = to_jsonable(obj)
    assert out == {"1": 0.5, "arr": [0, 1, 2], "b": True, "i": 7, "p": str(tmp_path / "x"),
                   "t": [None, None, 1.0], "dc": {"a": 2, "p": "y"}}
    assert type(out["i"]) is int and type(out["b"]) is bool
    kept = to_jsonable([np.nan], nonfinite_as_none=False)
    assert math.isnan(kept[0])
    with pytest.raises(TypeError, match="object"):
        to_jsonable({"x": object()})


def test_atomic_write_json(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"b": np.float64(1.5), "a": [np.int32(1)], "n": np.nan, "p": Path("q")})
    text = path.read_text()
    assert text.endswith("}\n") and text == json.dumps({"b": 1.5, "a": [1], "n": None, "p": "q"}, indent=1) + "\n"
    atomic_write_json(path, {"b": 1, "a": 2}, indent=None, sort_keys=True)
    assert path.read_text() == '{"a": 2, "b": 1}\n'
    with pytest.raises(TypeError):
        atomic_write_json(path, {"x": object()})
    assert path.read_text() == '{"a": 2, "b": 1}\n' and _listing(tmp_path) == ["r.json"]


def test_atomic_torch_save_roundtrip_and_failure(tmp_path):
    path = tmp_path / "m" / "w.pt"
    state = {"w": torch.arange(4.0), "meta": {"k": 1}}
    atomic_torch_save(state, path)
    back = torch.load(path, weights_only=True)
    assert torch.equal(back["w"], state["w"]) and back["meta"] == {"k": 1}
    with pytest.raises(Exception):
        atomic_torch_save({"f": lambda: 0}, path)  # a lambda cannot be pickled: fails mid-write
    assert torch.equal(torch.load(path, weights_only=True)["w"], state["w"])
    assert _listing(path.parent) == ["w.pt"]


def test_atomic_save_figure(tmp_path):
    fig = _figure()
    png = atomic_save_figure(fig, tmp_path / "f.png", dpi=50)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = atomic_save_figure(fig, tmp_path / "f.svg")  # format from the suffix
    assert b"<svg" in svg.read_bytes()[:400]
    with pytest.raises(ValueError):
        atomic_save_figure(fig, tmp_path / "f.png", format="no-such-format")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _listing(tmp_path) == ["f.png", "f.svg"]


def test_atomic_save_png_grey_rgb_pil_and_failure(tmp_path):
    grey = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
    rgb = np.stack([grey, grey[::-1], grey.T], -1)
    for name, arr in (("g.png", grey), ("c.png", rgb)):
        atomic_save_png(arr, tmp_path / name)
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and np.array_equal(np.asarray(im), arr)
    atomic_save_png(Image.fromarray(grey), tmp_path / "p.png", compress_level=1)
    with Image.open(tmp_path / "p.png") as im:
        assert np.array_equal(np.asarray(im), grey)
    with pytest.raises(TypeError):
        atomic_save_png(np.zeros((4, 4), dtype=np.complex64), tmp_path / "g.png")  # PIL refuses the dtype
    with Image.open(tmp_path / "g.png") as im:
        assert np.array_equal(np.asarray(im), grey)
    assert _listing(tmp_path) == ["c.png", "g.png", "p.png"]


def test_atomic_save_npz_keeps_name_and_roundtrips(tmp_path):
    path = tmp_path / "stats.npz"
    atomic_save_npz(path, mean=np.arange(3.0), cov=np.eye(2))
    with np.load(path) as z:
        assert np.array_equal(z["mean"], np.arange(3.0)) and np.array_equal(z["cov"], np.eye(2))
    odd = atomic_save_npz(tmp_path / "no_suffix", a=np.ones(1))  # np.savez would append .npz to a name
    assert odd.is_file() and not (tmp_path / "no_suffix.npz").exists()
    with pytest.raises(Boom):
        atomic_save_npz(path, ok=np.zeros(1), bad=_Unsaveable())  # fails after the first array is written
    with np.load(path) as z:
        assert set(z.files) == {"mean", "cov"}
    assert _listing(tmp_path) == ["no_suffix", "stats.npz"]


class _Unsaveable:
    def __array__(self, *args, **kwargs):
        raise Boom("cannot become an array")


def test_atomic_copy_and_hashes(tmp_path):
    src = tmp_path / "src.bin"
    data = os.urandom(3 * (1 << 20) + 17)  # more than one copy block
    src.write_bytes(data)
    os.chmod(src, 0o600)
    dst = atomic_copy(src, tmp_path / "out" / "dst.bin")
    assert dst.read_bytes() == data and _mode(dst) == _usual_mode()
    assert file_sha256(dst) == hashlib.sha256(data).hexdigest()
    assert file_sha256(dst, chunk=1000) == file_sha256(src)
    assert file_hash(dst, "md5") == hashlib.md5(data).hexdigest()
    assert file_hash(dst, "sha512") == hashlib.sha512(data).hexdigest()
    with pytest.raises(FileNotFoundError):
        atomic_copy(tmp_path / "missing", dst)
    assert dst.read_bytes() == data and _listing(dst.parent) == ["dst.bin"]


def test_copy_failure_mid_stream_leaves_nothing(tmp_path, monkeypatch):
    import shutil

    src = tmp_path / "src.bin"
    src.write_bytes(b"abc" * 1000)

    def broken(fin, fout, length=0):
        fout.write(fin.read(10))
        raise Boom("disk full")

    monkeypatch.setattr(shutil, "copyfileobj", broken)
    with pytest.raises(Boom):
        atomic_copy(src, tmp_path / "dst.bin")
    assert _listing(tmp_path) == ["src.bin"]
