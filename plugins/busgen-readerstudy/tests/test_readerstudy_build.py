"""Building a study (balanced, seeded, de-identified) and the answers database (one answer per reader and image)."""

from __future__ import annotations

import json
import sqlite3
import struct
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busgen_readerstudy.build import StudyError, build_study, load_study
from busgen_readerstudy.command import main
from busgen_readerstudy.store import AnswerStore, DuplicateAnswer


@pytest.fixture(scope="module")
def datalists(tmp_path_factory, bus_bra_root) -> tuple[Path, Path]:
    from busgen_monai.data.loaders import load_bus_bra
    from busgen_monai.data.phantom import write_dataset
    from busgen_monai.data.schema import save_datalist

    root = tmp_path_factory.mktemp("rs_build")
    real = load_bus_bra(bus_bra_root, check_masks=False, relative_to=root)
    save_datalist(real, root / "real.json", validate=False)
    gen = write_dataset(root / "gen", n=16, seed=4, size=(64, 64))
    return root / "real.json", gen


def _png_chunks(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds = 8, []
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kinds.append(data[pos + 4:pos + 8].decode("ascii"))
        pos += 12 + length
    return kinds


def test_study_is_balanced_seeded_and_deidentified(datalists, tmp_path):
    real, gen = datalists
    summary = build_study(real, gen, tmp_path / "a", n_per_side=6, seed=11, readers=3)
    assert summary["images"] == 12 and summary["per_side"] == 6 and summary["size"] == 64
    study = load_study(tmp_path / "a")
    items = study["items"]
    assert Counter(it["truth"] for it in items) == {"real": 6, "generated": 6}
    for side in ("real", "generated"):  # pathologies balanced within a side
        counts = Counter(it["pathology"] for it in items if it["truth"] == side)
        assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == 2
    real_items = json.loads(real.read_text())["test"]
    for it in items:  # real images come from the real test split
        if it["truth"] == "real":
            assert it["source"]["split"] == "test" and it["pathology"] == real_items[it["source"]["index"]]["pathology"]
    # opaque ids; the served folder holds nothing but <id>.png; no metadata chunks; one size and mode for all
    ids = [it["id"] for it in items]
    assert len(set(ids)) == 12 and all(len(i) == 12 and set(i) <= set("0123456789abcdef") for i in ids)
    files = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())
    assert files == sorted(f"{i}.png" for i in ids)
    for i in ids:
        path = tmp_path / "a" / "images" / f"{i}.png"
        assert set(_png_chunks(path)) == {"IHDR", "IDAT", "IEND"}
        with Image.open(path) as im:
            assert im.mode == "L" and im.size == (64, 64) and not im.info
    # order in the manifest is shuffled (not real block then generated block) and each reader has its own order
    truths = [it["truth"] for it in items]
    assert truths != sorted(truths) and truths != sorted(truths, reverse=True)
    orders = [r["order"] for r in study["readers"]]
    assert all(sorted(o) == sorted(ids) for o in orders) and len({tuple(o) for o in orders}) == 3
    codes = [r["code"] for r in study["readers"]]
    assert len(set(codes)) == 3 and study["admin_code"] not in codes
    assert (tmp_path / "a" / "reader_codes.csv").read_text().splitlines()[0] == "reader,code"

    # same seed: same ids, orders and pixels; another seed: another draw
    build_study(real, gen, tmp_path / "b", n_per_side=6, seed=11, readers=3)
    again = load_study(tmp_path / "b")
    assert [it["id"] for it in again["items"]] == ids
    assert [r["order"] for r in again["readers"]] == orders
    assert all((tmp_path / "a" / "images" / f"{i}.png").read_bytes() == (tmp_path / "b" / "images" / f"{i}.png").read_bytes()
               for i in ids)
    other = build_study(real, gen, tmp_path / "c", n_per_side=6, seed=12, readers=3)
    assert set(it["id"] for it in load_study(other["study"])["items"]).isdisjoint(ids)


def test_generated_pixels_kept_and_real_images_cropped_to_the_square(datalists, tmp_path):
    real, gen = datalists
    build_study(real, gen, tmp_path / "s", n_per_side=4, seed=2, readers=1)
    study = load_study(tmp_path / "s")
    gen_items = json.loads(gen.read_text())
    base = gen.parent
    for it in study["items"]:
        with Image.open(tmp_path / "s" / "images" / f"{it['id']}.png") as im:
            shown = np.asarray(im)
        if it["truth"] == "generated":  # already 64 x 64: same grey pixels, new file
            src = gen_items[it["source"]["split"]][it["source"]["index"]]
            with Image.open(base / src["image"]) as im:
                assert np.array_equal(shown, np.asarray(im.convert("L")))
        else:  # real: a window of the original, not a squashed whole frame
            assert shown.shape == (64, 64) and shown.std() > 5


def test_build_refusals_name_the_fix(datalists, tmp_path, capsys):
    real, gen = datalists
    build_study(real, gen, tmp_path / "s", n_per_side=2, seed=0, readers=1)
    with pytest.raises(StudyError, match="already holds a study"):
        build_study(real, gen, tmp_path / "s", n_per_side=2)
    build_study(real, gen, tmp_path / "s", n_per_side=3, seed=1, readers=1, force=True)  # stale images removed
    assert len(list((tmp_path / "s" / "images").glob("*.png"))) == 6
    AnswerStore(tmp_path / "s" / "answers.sqlite")
    with pytest.raises(StudyError, match="holds readers' answers"):
        build_study(real, gen, tmp_path / "s", n_per_side=2, force=True)
    with pytest.raises(StudyError, match="no items in split"):
        build_study(gen, gen, tmp_path / "t", real_splits=["nonexistent"])
    with pytest.raises(StudyError, match="unique"):
        build_study(real, gen, tmp_path / "u", readers=["a", "a"])
    assert main(["build", "--real", str(tmp_path / "missing.json"), "--generated", str(gen),
                 "--out", str(tmp_path / "v")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.json" in err[0] and "does not exist" in err[0]
    assert main(["analyse", str(tmp_path / "s"), "--out", str(tmp_path / "r")]) == 1
    assert "no answers yet" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "study.json").write_text("{")
    assert main(["serve", str(tmp_path / "bad")]) == 1
    assert "not valid JSON" in capsys.readouterr().err


def test_store_commits_each_answer_and_refuses_a_second_one(tmp_path):
    store = AnswerStore(tmp_path / "answers.sqlite")
    store.add("ana", "abc", 0, "real", 3, None, None, 1200)
    # committed: another connection (as another process would) sees it at once; WAL journal
    con = sqlite3.connect(tmp_path / "answers.sqlite")
    assert con.execute("SELECT reader, image_id, call, confidence FROM answers").fetchall() == [("ana", "abc", "real", 3)]
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # the database itself refuses a second answer and out-of-range values, whatever the server checks
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("INSERT INTO answers (reader, image_id, position, call, confidence, answered_at)"
                    " VALUES ('ana', 'abc', 0, 'generated', 2, 0)")
    for call, conf in (("maybe", 3), ("real", 0), ("real", 6)):
        with pytest.raises(sqlite3.IntegrityError):
            con.execute("INSERT INTO answers (reader, image_id, position, call, confidence, answered_at)"
                        " VALUES ('bob', 'x', 0, ?, ?, 0)", (call, conf))
    con.close()
    # eight threads race to answer the same image for the same reader: exactly one wins
    results: list[str] = []

    def attempt(k: int) -> None:
        try:
            store.add("bob", "img", 0, "generated", 1 + k % 5, None, None, None)
            results.append("ok")
        except DuplicateAnswer:
            results.append("dup")

    threads = [threading.Thread(target=attempt, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["dup"] * 7 + ["ok"]
    assert store.counts() == {"ana": 1, "bob": 1}
