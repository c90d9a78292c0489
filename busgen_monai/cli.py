"""``busgen``: the command-line entry point (thin: it delegates to the library and to MONAI bundles).

Sub-commands::

    busgen plugins                         list installed plugins (and those that failed to load)
    busgen bundles                         list bundles (built-in and shipped by plugins) with their configs
    busgen run BUNDLE CONFIG [--key value] run a bundle config through monai.bundle (bundle root set)
    busgen phantom OUT [...]               write a phantom data set (PNG + datalist) and/or a PACS-style export
    busgen datalist build|validate|summary build a datalist from BUS-BRA / BUSI / CSV, check or summarise one
    busgen ingest SRC OUT [...]            DICOM PACS export -> datalist (when the ingestion module is present)
    busgen demo [--out DIR]                the main job, end to end on the embedded phantom
    busgen sample OUT [--n 64 ...]         generate images (default: the shipped BUS-BRA generator)
    busgen export CKPT OUT [...]           a training checkpoint -> a small model file (+ box prior) to share
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser", "resolve_bundle", "resolve_configs", "parse_overrides", "run_bundle"]


# ---------------------------------------------------------------------------------------------- helpers
# the bundle-running plumbing lives in busgen_monai.bundle_run (public: plugins and the main job import it there);
# re-exported here for callers of earlier releases
from .bundle_run import _all_bundles, _configs_of, parse_overrides, resolve_bundle, resolve_configs, run_bundle  # noqa: E402,F401


# ---------------------------------------------------------------------------------------------- commands
def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import discover_plugins

    reg = discover_plugins()
    if not reg.plugins and not reg.errors:
        print("no busgen plugins installed (entry-point group 'busgen_monai.plugins')")
    for p in reg.plugins.values():
        print(f"{p.name} {p.version}  {p.description}")
        for role, target in sorted(p.components.items()):
            print(f"    component {role}: {target}")
        for name, path in sorted(p.bundle_paths().items()):
            print(f"    bundle {name}: {path}")
        for cmd, target in sorted(p.commands.items()):
            print(f"    command busgen {cmd}: {target}")
    for name, err in reg.errors.items():
        print(f"{name}  FAILED TO LOAD (skipped): {err}")
    return 0


def cmd_bundles(args: argparse.Namespace) -> int:
    bundles = _all_bundles()
    if not bundles:
        print("no bundles found")
    for name, path in sorted(bundles.items()):
        print(f"{name}  {path}\n    configs: {', '.join(_configs_of(path))}")
    return 0


def cmd_run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    run_bundle(args.bundle, args.config, args.run_id, **parse_overrides(extra))
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    from .synthetic import write_dataset

    out = Path(args.out)
    if not args.pacs_only:
        path = write_dataset(out / "dataset", n=args.n, seed=args.seed, size=(args.size, args.size))
        print(f"phantom dataset: {path}")
    if args.pacs or args.pacs_only:
        from .synthetic import write_pacs_export

        root = write_pacs_export(out / "pacs", n_patients=args.patients, seed=args.seed)
        print(f"phantom PACS export: {root}")
    return 0


def _vocab(args: argparse.Namespace):
    from .data.devices import DeviceVocabulary, default_vocabulary

    return DeviceVocabulary.from_file(args.device_vocab) if getattr(args, "device_vocab", None) else default_vocabulary()


def cmd_datalist(args: argparse.Namespace) -> int:
    from .data import loaders, schema

    if args.action == "build":
        out = Path(args.out)
        fractions = tuple(float(f) for f in args.fractions.split(","))
        common = {"fractions": fractions, "seed": args.seed, "vocabulary": _vocab(args), "relative_to": out.parent}
        if args.format == "bus-bra":
            data = loaders.load_bus_bra(args.src, fold=args.fold, on_unknown_device=args.on_unknown_device, **common)
        elif args.format == "busi":
            data = loaders.load_busi_folder(args.src, device=args.device, **common)
        else:
            data = loaders.load_image_csv(args.src, on_unknown_device=args.on_unknown_device,
                                          pathologies=args.pathologies.split(",") if args.pathologies else None,
                                          **common)
        report = data.pop("load_report", None)
        unknown = data.pop("unknown_devices", None)
        n_items = schema.summarize_datalist(data)["items"]
        if not n_items:  # the loaders refuse this already; never write an empty datalist
            raise schema.EmptyDatalistError(f"{args.format} source {args.src} gave 0 items; nothing written", out)
        schema.save_datalist(data, out, vocabulary=common["vocabulary"])
        print(f"wrote {out}: {n_items} items")
        if report:
            for line in report.get("warnings", []) + report.get("rejected", []):
                print(f"  note: {line}")
        if unknown:
            print(f"  unknown devices (recorded as 'unknown' or added): {unknown}")
        return 0
    if args.action == "validate":
        schema.load_datalist(args.path, vocabulary=_vocab(args), allow_empty=False)
        print(f"{args.path}: valid")
        return 0
    data = schema.load_datalist(args.path, vocabulary=_vocab(args), check_files=False)
    summary = schema.summarize_datalist(data)
    print(json.dumps(summary, indent=2))
    if args.grid:
        from .data.io import read_image_rgb
        from .visualize import save_image_grid

        items = [it for _, _, it in schema.iter_items(data)][: args.grid_n]
        base = Path(data["base_dir"])
        images = [read_image_rgb(base / it["image"]) for it in items]
        labels = [f"{it['pathology']}\n{it['device']}" for it in items]
        save_image_grid(images, args.grid, labels=labels, boxes=[it["boxes"] for it in items])
        print(f"grid: {args.grid}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .pipeline import run_demo

    run_demo(args.out, force=args.force, until=args.until)
    return 0


def _delegate(dotted: str, argv: Sequence[str]) -> int:
    from .plugins import locate

    return int(locate(dotted)(list(argv)) or 0)


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="busgen", description="BUSGen on MONAI: breast-ultrasound generative toolkit.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("plugins", help="list installed plugins", description="List plugins registered under the "
                   "'busgen_monai.plugins' entry-point group, with components, bundles and commands; broken "
                   "plugins are listed with their error.")
    sub.add_parser("bundles", help="list bundles and their configs",
                   description="List built-in bundles, bundles on BUSGEN_BUNDLE_PATH and bundles shipped by plugins.")

    r = sub.add_parser("run", help="run a bundle config through monai.bundle",
                       description="Run BUNDLE's CONFIG with `monai.bundle.run`, bundle_root/meta/logging set. "
                       "Extra --key value pairs override config entries (values parsed as JSON when possible). "
                       "Example: busgen run busgen_pretrain train,preset_tiny --datalist d.json --output_dir runs/x")
    r.add_argument("bundle", help="bundle name (see `busgen bundles`) or folder")
    r.add_argument("config", help="config name (train, inference) or comma list merged in order (train,preset_tiny)")
    r.add_argument("--run-id", default="run", help="the config entry to run (default: run)")

    ph = sub.add_parser("phantom", help="write a phantom data set / PACS export",
                        description="Deterministic breast-ultrasound phantom: PNG images + masks + datalist, "
                        "and optionally a PACS-style DICOM export with fake PHI (for ingestion tests).")
    ph.add_argument("out", help="output folder")
    ph.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    ph.add_argument("--size", type=int, default=128, help="image size in pixels (default 128)")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--pacs", action="store_true", help="also write a PACS-style DICOM export")
    ph.add_argument("--pacs-only", action="store_true", help="write only the PACS-style export")
    ph.add_argument("--patients", type=int, default=4, help="patients in the PACS export (default 4)")

    d = sub.add_parser("datalist", help="build, validate or summarise a datalist",
                       description="Datalists are the contract between stages (docs/datalist.md).")
    dsub = d.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = dsub.add_parser("build", help="build a datalist from a dataset",
                        description="bus-bra: the BUS-BRA folder; busi: a BUSI-style folder (class folders "
                        "benign/malignant/normal, any case, holding <name>.png + <name>_mask.png, or images/<name>.png "
                        "+ masks/<name>[_mask].png); csv: a CSV with "
                        "image,pathology[,device,birads,patient_id,boxes,mask,split] columns. A source that gives "
                        "0 items is an error (nothing is written).")
    b.add_argument("format", choices=["bus-bra", "busi", "csv"])
    b.add_argument("src", help="dataset folder (bus-bra, busi) or CSV file")
    b.add_argument("out", help="datalist JSON to write (image paths are written relative to its folder)")
    b.add_argument("--fractions", default="0.7,0.15,0.15", help="patient-wise train,val,test fractions")
    b.add_argument("--seed", type=int, default=0, help="split seed")
    b.add_argument("--fold", type=int, default=None, help="bus-bra: use 5-fold-cv.csv fold K as the test split")
    b.add_argument("--device", default="unknown", help="busi: device name for every image")
    b.add_argument("--device-vocab", default=None, help="JSON/YAML file adding devices to the vocabulary")
    b.add_argument("--on-unknown-device", choices=["error", "add", "null"], default="error",
                   help="unknown device names: fail (default), add to the vocabulary, or record as 'unknown'")
    b.add_argument("--pathologies", default=None, help="csv: comma list of allowed pathologies")
    v = dsub.add_parser("validate", help="validate a datalist (files, boxes, labels, patient-wise splits; "
                        "an empty datalist is invalid)")
    v.add_argument("path")
    v.add_argument("--device-vocab", default=None)
    s = dsub.add_parser("summary", help="counts per split/pathology/device; optional sample grid PNG")
    s.add_argument("path")
    s.add_argument("--device-vocab", default=None)
    s.add_argument("--grid", default=None, help="write a sample-grid PNG here")
    s.add_argument("--grid-n", type=int, default=32, help="images in the grid")

    sub.add_parser("ingest", help="DICOM PACS export -> datalist (see `busgen ingest --help`)", add_help=False)

    dm = sub.add_parser("demo", help="the main job: every stage end to end on the embedded phantom (CPU, minutes)",
                        description="Runs every stage on data the project generates itself; resumable (finished "
                        "stages are skipped unless --force).")
    dm.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    dm.add_argument("--force", action="store_true", help="re-run finished stages")
    dm.add_argument("--until", default=None, help="stop after this stage (default: run all stages)")

    pk = sub.add_parser("package", help="package an adapted generator as a model-zoo bundle folder + zip",
                        description="Adapter-only (--form adapter: --adapter + --base) or merged (--form merged: --model).")
    pk.add_argument("out", help="output folder (gets NAME/ and NAME.zip)")
    pk.add_argument("--form", choices=["adapter", "merged"], default="adapter")
    pk.add_argument("--adapter", default=None, help="adapter.pt from bundles/busgen_adapt")
    pk.add_argument("--model", default=None, help="merged model.pt from bundles/busgen_adapt")
    pk.add_argument("--base", default=None, help="base checkpoint the adapter was trained on (hash recorded)")
    pk.add_argument("--box-prior", default=None, help="box_prior.json to ship (from the adapt run's models/)")
    pk.add_argument("--devices", nargs="*", default=None, help="default devices to sample")
    pk.add_argument("--preset", default="tiny")
    pk.add_argument("--name", default="busgen_adapted")
    pk.add_argument("--push", default=None, metavar="HUB",
                    help="also publish the zip to a bundle hub folder (model files by URL + sha256; see `busgen pull`)")
    pk.add_argument("--version", default="0.1.0")
    pk.add_argument("--base-name", default="busgen_pretrain")
    pk.add_argument("--base-version", default="0.1.0")

    sm = sub.add_parser("sample", help="generate images (default: the shipped BUS-BRA generator)",
                        description="Generate labelled images with the sample bundle. Default generator: the one "
                        "the project ships (64 px, trained on the BUS-BRA training split; docs/model_card.md). "
                        "Pathologies are balanced; devices follow the training data's mix unless listed. "
                        "Any other key of the sample bundle (bundles/busgen_sample/configs/inference.json) is "
                        "passed as --key value and checked against the bundle, e.g. --sampler ddim, --use_ema false. "
                        "Example: busgen sample out --n 64 --pathology malignant --device GE-LOGIQ-7")
    sm.add_argument("out", help="output folder (images/, datalist.json, sample_grid.png, run.json)")
    sm.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    sm.add_argument("--pathology", default=None, help="comma list (default: every pathology of the model)")
    sm.add_argument("--device", default=None, help="comma list of device names (default: the model's devices)")
    sm.add_argument("--box", default=None, help="one lesion box x1,y1,x2,y2 (normalised) for every image "
                    "(default: drawn from the box prior)")
    sm.add_argument("--checkpoint", default=None, help="generator checkpoint, model file or run folder "
                    "(default: the shipped generator)")
    sm.add_argument("--datalist", default=None, help="datalist whose training split gives the devices, their mix "
                    "and the box prior")
    sm.add_argument("--box-prior", default=None, help="box_prior.json (default: the one next to the checkpoint)")
    sm.add_argument("--steps", type=int, default=None, help="solver steps (default: the bundle's num_inference_steps)")
    sm.add_argument("--guidance", type=float, default=None, help="CFG weight w (default: the model's)")
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--chunk-size", type=int, default=None, help="images per sampler batch (default: the bundle's "
                    "chunk_size)")
    sm.add_argument("--device-mix", choices=["data", "uniform"], default="data",
                    help="device shares when devices are not listed: the training data's mix (default) or equal")
    sm.add_argument("--force", action="store_true", help="start over in a folder holding a run with other settings")
    sm.add_argument("--quiet", action="store_true", help="no progress bar")

    ex = sub.add_parser("export", help="a training checkpoint -> a small model file to share",
                        description="Write the weights to sample with (EMA by default), the condition codec, the "
                        "network's constructor arguments and the training settings into one file that loads with "
                        "torch.load(weights_only=True); with --datalist also box_prior.json (and the training "
                        "device mix) next to it.")
    ex.add_argument("checkpoint", help="checkpoint file or the run's models/ folder (latest checkpoint)")
    ex.add_argument("out", help="model file to write, e.g. my_bundle/models/model.pt")
    ex.add_argument("--datalist", default=None, help="the training datalist: box prior and device mix")
    ex.add_argument("--prior-points", type=int, default=None, help="ship a box prior resampled to this many "
                    "points per pathology (no training box is stored)")
    ex.add_argument("--dtype", choices=["float32", "float16"], default=None, help="weight dtype (float16 halves it)")
    ex.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    ex.add_argument("--layout", choices=["file", "zoo"], default="file",
                    help="file: one file with everything (default); zoo: OUT a bare state dict (the model zoo's "
                         "layout) plus OUT with suffix .json holding network arguments, codec and settings; an "
                         "OUT ending in .safetensors is written with safetensors")
    ex.add_argument("--preset", default=None, help="only for old checkpoints without saved settings")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--torchscript", default=None, metavar="TS",
                    help="also write a TorchScript module (traced, checked against the network; codec and settings "
                         "inside as JSON) for runtimes without this package, e.g. MONAI Deploy")

    pl = sub.add_parser("pull", help="download a bundle from a bundle hub (folder or URL; sha256-checked)",
                        description="Download a packaged bundle pushed with `busgen package --push HUB`, through "
                                    "monai.bundle.download and download_large_files (every model file hash-checked).")
    pl.add_argument("name", help="bundle name")
    pl.add_argument("--hub", required=True, help="hub folder or URL (file://, http(s)://)")
    pl.add_argument("--version", default=None, help="default: the latest")
    pl.add_argument("--dest", default=".", help="folder to put NAME/ in (default: here)")
    pl.add_argument("--quiet", action="store_true")
    vf = sub.add_parser("verify", help="verify a bundle folder or zip offline (schema, hashes, shapes, sampling)")
    vf.add_argument("bundle")
    vf.add_argument("--base", default=None, help="base checkpoint (adapter-only bundles)")
    vf.add_argument("--no-sample", action="store_true", help="skip the load-and-sample round trip")
    # plugin commands: listed here with their plugin, parsed by the plugin's own main(argv) (see _main)
    from .plugins import discover_plugins

    reg = discover_plugins()
    for name, (plugin, _target) in sorted(reg.commands().items()):
        if name not in sub.choices:
            sub.add_parser(name, add_help=False, help=f"[plugin {plugin}] see `busgen {name} --help`")
    return p


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def cmd_sample(args) -> int:
    """``busgen sample``: the sample bundle with the shipped generator (or ``--checkpoint``) as the default."""
    from .inferers import default_generator, read_checkpoint

    ckpt = Path(args.checkpoint) if args.checkpoint else default_generator()
    overrides: dict = {"checkpoint": str(ckpt), "output_dir": str(Path(args.out).resolve()), "num_images": args.n,
                       "seed": args.seed, "device_mix": args.device_mix, "force": args.force,
                       "progress": not args.quiet}
    # options without a value here keep the bundle's default: each sampling default is declared once, in the bundle
    for key, value in (("num_inference_steps", args.steps), ("chunk_size", args.chunk_size)):
        if value is not None:
            overrides[key] = value
    if args.guidance is not None:
        overrides["guidance_w"] = args.guidance
    if args.pathology:
        overrides["pathologies"] = _csv(args.pathology)
    if args.datalist:
        overrides["datalist"] = str(Path(args.datalist).resolve())
    prior = Path(args.box_prior) if args.box_prior else ckpt.parent / "box_prior.json"
    if args.box:
        overrides["box_prior"] = None
    elif prior.is_file():
        overrides["box_prior"] = str(prior)
    elif not args.datalist:
        raise ValueError(f"no box prior next to {ckpt} (box_prior.json): give --box-prior FILE, --datalist D "
                         "(fitted on its training split) or --box x1,y1,x2,y2")
    devices = _csv(args.device)
    if devices is None and not args.datalist:
        # the devices the model was trained on and their shares, saved with the model by `busgen export --datalist`
        saved_mix = (read_checkpoint(ckpt).get("settings") or {}).get("device_mix")
        if not saved_mix:
            raise ValueError(f"{ckpt} does not record the devices it was trained on: give --device NAME[,NAME] or "
                             "--datalist (its training split's devices), or export it with busgen export --datalist")
        devices = sorted(saved_mix)
        if args.device_mix == "data":
            overrides["device_weights"] = [float(saved_mix[d]) for d in devices]
    if devices is not None:
        overrides["devices"] = devices
    if args.box:
        overrides["boxes"] = [[float(v) for v in args.box.split(",")]]
    extra = getattr(args, "bundle_overrides", None) or {}
    clash = sorted(set(extra) & set(overrides))
    if clash:
        raise ValueError(f"--{clash[0]} is set by this command's own option; use that option instead")
    overrides.update(extra)
    run_bundle("busgen_sample", "inference", **overrides)
    print(f"images: {Path(args.out) / 'images'}\ndatalist: {Path(args.out) / 'datalist.json'}\n"
          f"grid: {Path(args.out) / 'sample_grid.png'}")
    return 0


def cmd_export(args) -> int:
    """``busgen export``: a training checkpoint -> ``model.pt`` (sampling weights, codec, network arguments,
    settings) and, with ``--datalist``, a ``box_prior.json`` next to it."""
    from .data.schema import iter_items, load_datalist
    from .inferers import BoxPrior, export_generator, generator_settings, read_checkpoint, resolve_checkpoint
    from .inferers.generate import device_weights_from

    ckpt = resolve_checkpoint(args.checkpoint)
    state = read_checkpoint(ckpt)  # read once; export_generator takes the state
    out = Path(args.out)
    settings = None
    if args.datalist:
        data = load_datalist(args.datalist, check_files=False)
        train = [it for split, _, it in iter_items(data) if split == "training"]
        devices = sorted({it["device"] for it in train})
        weights = device_weights_from(data, devices)
        settings = {**generator_settings(state, args.preset),
                    "device_mix": {d: round(w / sum(weights), 6) for d, w in zip(devices, weights)}}
        prior = BoxPrior().fit(train, seed=args.seed)
        if args.prior_points:
            prior = prior.resampled(args.prior_points, seed=args.seed)
        prior.save(out.parent / "box_prior.json")
        print(f"box prior: {out.parent / 'box_prior.json'}")
    path = export_generator(state, out, use_ema=not args.no_ema, preset=args.preset, dtype=args.dtype,
                            settings=settings, layout=args.layout)
    from .utils.io import file_sha256

    print(f"model: {path} ({path.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(path)})")
    if args.torchscript:
        from .inferers.torchscript import export_torchscript

        ts = export_torchscript(path, args.torchscript)
        print(f"torchscript: {ts} ({ts.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(ts)}; equal outputs checked)")
    return 0


def cmd_package(args) -> int:
    from .bundle_tools import package_bundle

    root, zpath = package_bundle(args.out, args.form, adapter=args.adapter, merged_model=args.model,
                                 base_checkpoint=args.base, preset_name=args.preset, name=args.name,
                                 version=args.version, base_name=args.base_name, base_version=args.base_version,
                                 box_prior=args.box_prior, devices=args.devices)
    print(f"bundle: {root}\nzip: {zpath}")
    if args.push:
        from .hub import push_bundle

        entry = push_bundle(zpath, args.push)
        print(f"pushed: {entry['zip']} (sha256 {entry['zip_sha256']}; {len(entry['models'])} model files by URL)")
    return 0


def cmd_pull(args) -> int:
    from .hub import pull_bundle

    path = pull_bundle(args.name, args.hub, args.dest, version=args.version, progress=not args.quiet)
    print(f"bundle: {path}\nnext: busgen verify {path}" + (" --base /path/to/base.pt" if
                                                          (path / "models" / "adapter.pt").is_file() else ""))
    return 0


def cmd_verify(args) -> int:
    from .bundle_tools import BundleVerificationError, verify_bundle

    try:
        report = verify_bundle(args.bundle, base_checkpoint=args.base, sample=not args.no_sample)
    except BundleVerificationError as err:
        print(f"busgen verify: FAILED: {err}", file=sys.stderr)
        return 1
    for k, v in report.items():
        print(f"{k}: {v}")
    print("busgen verify: OK")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # full tracebacks; otherwise errors are one line
    argv = [a for a in argv if a != "--debug"]
    try:
        return _main(argv)
    except Exception as err:  # noqa: BLE001 - one line unless --debug
        if debug:
            raise
        # monai.bundle wraps the error of a config expression ("Failed to evaluate ConfigExpression: ..."): report
        # the innermost cause, which names the file or key
        root = err
        while (root.__cause__ or root.__context__) is not None and "Failed to evaluate" in str(root):
            root = root.__cause__ or root.__context__
        text = str(root).strip()
        print(f"busgen: error: {type(root).__name__}: {text.splitlines()[0] if text else ''}"
              " (run with --debug for the traceback)", file=sys.stderr)
        return 1


_CORE_COMMANDS = ("plugins", "bundles", "run", "phantom", "datalist", "ingest", "demo", "package", "sample", "export",
                  "verify", "pull")


def _main(argv: list[str]) -> int:
    parser = build_parser()
    # delegated commands keep their own argument parsers
    if argv and argv[0] == "ingest":
        return _delegate("busgen_monai.data.ingest.ingest_main", argv[1:])
    if argv and not argv[0].startswith("-") and argv[0] not in _CORE_COMMANDS:
        from .plugins import discover_plugins

        commands = discover_plugins().commands()
        if argv[0] in commands:
            return _delegate(commands[argv[0]][1], argv[1:])
    if argv and argv[0] in ("run", "sample"):
        args, extra = parser.parse_known_args(argv)
    else:
        args, extra = parser.parse_args(argv), []
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {"plugins": cmd_plugins, "bundles": cmd_bundles, "phantom": cmd_phantom,
                "datalist": cmd_datalist, "demo": cmd_demo, "package": cmd_package, "verify": cmd_verify,
                "sample": cmd_sample, "export": cmd_export, "pull": cmd_pull}
    try:
        if args.command == "run":
            return cmd_run(args, extra)
        if args.command == "sample":  # bundle keys pass through: --sampler ddim, --use_ema false, ...
            args.bundle_overrides = parse_overrides(extra)
        return handlers[args.command](args)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"busgen {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
