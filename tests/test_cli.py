"""The ``busgen`` command, run in-process through ``main(argv)`` and once as the installed console script."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from busgen_monai.cli import main, parse_overrides


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["datalist", "build", "--help"],
                                  ["phantom", "--help"], ["demo", "--help"], ["plugins", "--help"]])
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: busgen" in out and len(out) > 200


def test_plugin_commands_listed_in_help_and_errors_are_one_line(tmp_path, capsys):
    from busgen_monai.plugins import discover_plugins

    commands = discover_plugins().commands()
    assert {"clean", "train-protector", "classify-export"} <= set(commands)
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name, (plugin, _) in commands.items():
        assert f"[plugin {plugin}]" in out and name in out
    # a plugin command's failure goes through the same one-line error handling as the core commands
    assert main(["classify-export", "--ckpt", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.ts")]) != 0
    err = capsys.readouterr().err
    assert "missing.pt" in err and "Traceback" not in err


def test_console_script_installed():
    exe = shutil.which("busgen") or str(__import__("pathlib").Path(sys.executable).parent / "busgen")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "datalist" in out and "plugins" in out


def test_datalist_build_validate_summary_on_bus_bra(bus_bra_root, tmp_path, capsys):
    out = tmp_path / "dl" / "bus_bra.json"
    assert main(["datalist", "build", "bus-bra", str(bus_bra_root), str(out), "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "1875 items" in text and "bus_0845-s" in text  # the quirk is reported
    assert main(["datalist", "validate", str(out)]) == 0
    grid = tmp_path / "grid.png"
    assert main(["datalist", "summary", str(out), "--grid", str(grid), "--grid-n", "8"]) == 0
    summary = json.loads(capsys.readouterr().out.split("grid:")[0].split("valid\n")[-1])
    assert summary["items"] == 1875 and summary["pathology"] == {"benign": 1268, "malignant": 607}
    with Image.open(grid) as im:
        assert im.format == "PNG" and im.size[0] > 400


def test_datalist_errors_are_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 1, "training": [{"image": "nope.png"}]}))
    assert main(["datalist", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "busgen datalist: error:" in err and "training[0] (nope.png)" in err
    assert main(["datalist", "validate", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_datalist_build_csv_unknown_device(tmp_path, capsys):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "l.csv").write_text("image,pathology,device\na.png,benign,Hitachi Noblus\n")
    assert main(["datalist", "build", "csv", str(tmp_path / "l.csv"), str(tmp_path / "o.json")]) == 2
    assert "unknown ultrasound device 'Hitachi Noblus'" in capsys.readouterr().err
    assert main(["datalist", "build", "csv", str(tmp_path / "l.csv"), str(tmp_path / "o.json"),
                 "--on-unknown-device", "null", "--fractions", "1,0,0"]) == 0
    assert "unknown devices" in capsys.readouterr().out


def test_run_unknown_bundle_and_config_errors(capsys):
    assert main(["run", "nope", "train"]) != 0
    err = capsys.readouterr().err
    assert "no bundle 'nope'" in err and len(err.strip().splitlines()) == 1
    assert main(["run", "busgen_sample", "nope"]) != 0
    assert "has no config 'nope'" in capsys.readouterr().err


def test_parse_overrides():
    assert parse_overrides(["--epochs", "3", "--lr=0.1", "--name", "x", "--flag", "true", "--ids", "[1,2]"]) == {
        "epochs": 3, "lr": 0.1, "name": "x", "flag": True, "ids": [1, 2]}
    with pytest.raises(ValueError, match="needs a value"):
        parse_overrides(["--epochs"])
