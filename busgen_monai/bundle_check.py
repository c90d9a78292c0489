"""Check a bundle config before anything of it runs: override keys and values, and a static safety check.

:func:`validate_overrides` (called by every bundle run) compares command-line / API overrides with the keys
the config files declare: an unknown key (``--num_imagse``) is an error with a "did you mean" suggestion
instead of being silently ignored; a value of the wrong type or out of range (``--guidance_w -3``,
``--chunk_size 0``, ``--num_inference_steps 0``, an image size the network cannot halve, an image size other
than the one the run's generator checkpoint was trained at) is an error naming the key and the fix. Errors are
:class:`BundleConfigError`, one line each.

:func:`check_config_static` reads config files as text and refuses, without evaluating anything, what
could run code that is not the project's or MONAI's: expressions (``$...``) that call or import outside
``torch``/``monai``/``numpy``/``busgen_monai``, reach private attributes (``__class__``, ``_x``), use
``os`` beyond ``os.path`` and reading ``os.environ``, call ``eval``/``exec``/``open``/``__import__``, or load weights with
``weights_only=False``; ``_target_`` components outside those packages; and ``%`` references to files
outside the bundle. ``busgen verify`` runs it before the bundle's config is parsed.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["BundleConfigError", "declared_keys", "validate_overrides", "check_config_static", "ALLOWED_PACKAGES",
           "CHECKPOINT_KEYS"]

#: Top-level packages whose components and functions a shared bundle config may use.
ALLOWED_PACKAGES = ("torch", "monai", "numpy", "json", "math", "busgen_monai", "busgen_classify", "busgen_clean", "busgen_cpsample",
                    "busgen_deviceaug", "ignite")
_SAFE_BUILTINS = {"int", "float", "str", "len", "range", "list", "dict", "tuple", "bool", "min", "max", "abs", "sum",
                  "sorted", "any", "all", "zip", "enumerate", "round", "isinstance", "None", "True", "False", "set",
                  "print"}
_ALIASES = {"np": "numpy", "dist": "torch", "os": "os"}
_OS_ALLOWED = {"os.path", "os.environ", "os.environ.get", "os.sep", "os.getcwd", "os.makedirs"}
_BLOCKED_CALLS = {"torch.hub", "torch.load", "numpy.load", "torch.jit.load", "torch.package", "torch.ops",
                  "torch.utils.cpp_extension", "torch.classes"}

# Ranges of well-known keys: key -> (minimum, description of the fix)
_RANGES = {
    "guidance_w": (0.0, "the classifier-free guidance weight must be >= 0 (0 = no guidance)"),
    "chunk_size": (1, "chunk_size is the number of images generated at once; use >= 1"),
    "num_inference_steps": (1, "use at least 1 sampling step"),
    "num_images": (1, "ask for at least 1 image"),
    "max_epochs": (1, "train for at least 1 epoch"),
    "batch_size": (1, "use a batch size >= 1"),
    "image_size": (8, "use an image size the network supports (e.g. 32, 64, 128, 256)"),
}


class BundleConfigError(ValueError):
    """A bundle config or override that must not run; the message is one line naming the key and the fix."""


# ------------------------------------------------------------------------------------------- overrides
def _load(path: Path) -> dict:
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(path.read_text()) or {}
    return json.loads(path.read_text())


BASE_KEY = "_base_"


def config_bases(path: Path, _seen: tuple[Path, ...] = ()) -> list[Path]:
    """The files a config overlays, in merge order, ending with ``path`` itself.

    An overlay config names the config it extends in a top-level ``"_base_"`` key (a path, or a list of paths,
    relative to the overlay file), e.g. the adapt bundle's ``train.json`` extends the pretrain ``train.json`` and
    holds only what differs. ``python -m monai.bundle run`` merges a list of config files in order
    (``--config_file "['base.json','overlay.json']"``): this returns that list. Bases are followed recursively;
    a cycle or a missing base is an error naming the file.
    """
    path = path.resolve()
    if path in _seen:
        raise ValueError(f"config {path} extends itself through {BASE_KEY!r}: {[str(p) for p in _seen]}")
    if path.suffix != ".json":
        return [path]
    try:
        bases = json.loads(path.read_text()).get(BASE_KEY) or []
    except (json.JSONDecodeError, AttributeError):
        return [path]  # not a JSON object: monai.bundle reports it when it loads the file
    out: list[Path] = []
    for base in [bases] if isinstance(bases, str) else bases:
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise ValueError(f"{path}: {BASE_KEY!r} names {base!r}, which does not exist ({base_path})")
        out += [p for p in config_bases(base_path, _seen + (path,)) if p not in out]
    return out + [path]


def declared_keys(config_files: Sequence[str | Path]) -> dict[str, Any]:
    """Top-level keys (and their raw values) declared by the config files, later files overriding earlier."""
    from monai.bundle import ConfigParser
    from monai.bundle.utils import merge_kv

    files: list[Path] = []
    for f in config_files:  # an overlay brings the configs it extends ("_base_")
        files += [p for p in config_bases(Path(f)) if p not in files]
    merged = ConfigParser(config={})
    for f in files:
        data = _load(Path(f))
        if isinstance(data, Mapping):
            for key, value in data.items():  # as monai.bundle merges them: "a#b" nests, "+key" extends
                try:
                    merge_kv(merged, key, value)
                except (KeyError, IndexError, ValueError):
                    merged.config[key] = value
    return merged.get()


_MISSING = object()


def _get_path(cfg: Any, parts: Sequence[str]) -> Any:
    """The value at ``a#b#c`` (``parts``) of a config, or ``_MISSING``."""
    for part in parts:
        if isinstance(cfg, Mapping) and part in cfg:
            cfg = cfg[part]
        elif isinstance(cfg, list) and part.isdigit() and int(part) < len(cfg):
            cfg = cfg[int(part)]
        else:
            return _MISSING
    return cfg


def _has_path(cfg: Any, parts: Sequence[str]) -> bool:
    return _get_path(cfg, parts) is not _MISSING


def _target_params(node: Any) -> set[str]:
    """Parameter names of the callable a ``{"_target_": "pkg.mod.name", ...}`` component names (its signature,
    ``__signature__`` included), so ``--network_def#dropout 0.1`` is accepted for any argument the component takes
    even when the config leaves it at its default. Only dotted targets in :data:`ALLOWED_PACKAGES` are looked up
    (importing a module of the project, MONAI or torch; nothing from the config runs). Empty when unknown."""
    import inspect
    import pydoc

    target = node.get("_target_") if isinstance(node, Mapping) else None
    if not isinstance(target, str) or "." not in target or target.split(".")[0] not in ALLOWED_PACKAGES:
        return set()
    try:
        obj = pydoc.locate(target)
        params = inspect.signature(obj).parameters.values() if obj is not None else ()
    except (TypeError, ValueError, ImportError):
        return set()
    return {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _suggest(key: str, keys: Iterable[str]) -> str:
    keys = sorted(keys)
    lowered = {k.lower(): k for k in keys}
    if key.lower() in lowered:
        return lowered[key.lower()]
    found = difflib.get_close_matches(key, keys, n=1, cutoff=0.6) or \
        [lowered[m] for m in difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)]
    return found[0] if found else ""


def _type_ok(default: Any, value: Any) -> bool:
    if isinstance(default, str) and default.startswith(("$", "@", "%")):
        return True  # computed default: any value of the right kind is checked by the range rules
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and \
            (isinstance(default, float) or isinstance(value, int) or float(value).is_integer())
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, Mapping):
        # a component definition ({"_target_": ...}) may be replaced by its value (a path, a number, a list)
        return "_target_" in default or isinstance(value, Mapping)
    return True


def _network_factor(declared: Mapping[str, Any], overrides: Mapping[str, Any]) -> int | None:
    """How many times the network halves the image (2 ** (levels - 1)), from the preset when known."""
    name = overrides.get("preset_name", declared.get("preset_name"))
    if not isinstance(name, str) or name.startswith(("$", "@")):
        return None
    try:
        from .presets import get_preset

        channels = get_preset(name).get("channels")
    except Exception:  # noqa: BLE001 - unknown preset: reported by the run itself
        return None
    return 2 ** (len(channels) - 1) if channels else None


#: Config keys that name the generator a run starts from (sampling, adaptation, the CPSampling protector).
CHECKPOINT_KEYS = ("checkpoint", "base_checkpoint", "generator_checkpoint")


def _literal(value: Any) -> bool:
    return isinstance(value, (str, Path)) and not str(value).startswith(("$", "@", "%")) and bool(str(value))


def _as_size(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and value and \
            all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value) if len(value) > 1 else (value[0], value[0])
    return None


def _check_trained_image_size(declared: Mapping[str, Any], overrides: Mapping[str, Any], value: Any) -> None:
    """Refuse an ``image_size`` other than the one the run's generator was trained at.

    The generator is the override or literal value of the first of :data:`CHECKPOINT_KEYS` the config declares
    (a computed default such as ``$os.path.join(@bundle_root, ...)`` is not evaluated here). Its saved settings
    (:func:`busgen_monai.inferers.generator_settings`) give the trained size. An old file without saved settings
    only warns: the preset it would fall back to is a guess, and ``--image_size`` is how such a file's real size is
    given. A file that cannot be read (or is not a generator) is left to the run, which reports it.
    """
    wanted = _as_size(value)
    if wanted is None:
        return
    for key in CHECKPOINT_KEYS:
        if key not in declared:
            continue
        path = overrides.get(key, declared[key])
        if not _literal(path):
            continue
        try:
            from .inferers import generator_settings, read_checkpoint

            state = read_checkpoint(str(path))  # weights-only: nothing in the file runs
            if not state.get("settings"):
                warnings.warn(f"{key} {path} has no saved settings (an old file): image_size={value!r} cannot be "
                              "checked against the size it was trained at", stacklevel=3)
                return
            trained = generator_settings(state)["image_size"]
        except Exception:  # noqa: BLE001 - unreadable or not a generator: the run itself reports it
            continue
        if _as_size(trained) is not None and _as_size(trained) != wanted:
            raise BundleConfigError(f"image_size={value!r} does not match the generator: {key} {path} was trained at "
                                    f"image_size={trained}; drop --image_size (the trained size is used) or pass "
                                    f"--image_size {trained}")
        return


def validate_overrides(config_files: Sequence[str | Path], overrides: Mapping[str, Any], *, bundle: str = "",
                       ignore: Iterable[str] = ("bundle_root", "meta_file", "logging_file", "run_id", "init_id",
                                                "final_id", "config_file", "tracking", "args_file")) -> None:
    """Raise :class:`BundleConfigError` for the first override the config does not declare, or whose value
    has the wrong type or is out of range. ``a#b`` keys must name an existing nested id. An ``image_size``
    override must equal the size the run's generator (``checkpoint``, ``base_checkpoint`` or
    ``generator_checkpoint``, when given as a path) was trained at."""
    declared = declared_keys(config_files)
    where = f"bundle {bundle}" if bundle else "the bundle config"
    ignore = set(ignore)
    for key, value in overrides.items():
        if key in ignore:
            continue
        parts = key.split("#")
        parent = _get_path(declared, parts[:-1]) if len(parts) > 1 else None
        if not _has_path(declared, parts) and not (len(parts) > 1 and parts[-1] in _target_params(parent)):
            hint = _suggest(key, [k for k in declared if not str(k).startswith("_")])
            fix = f"did you mean --{hint}?" if hint else "run `busgen bundles` to list configs; see the bundle's README"
            raise BundleConfigError(f"unknown config key {key!r} for {where}: {fix}")
        if len(parts) == 1 and not _type_ok(declared[key], value):
            raise BundleConfigError(f"{key}={value!r} has the wrong type for {where}: the config declares "
                                    f"{declared[key]!r} ({type(declared[key]).__name__})")
        if key in _RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
            low, fix = _RANGES[key]
            if value < low:
                raise BundleConfigError(f"{key}={value!r} is out of range: {fix}")
        if key == "image_size" and isinstance(value, int):
            factor = _network_factor(declared, overrides)
            if factor and value % factor:
                raise BundleConfigError(f"image_size={value} does not fit the network: it halves the image "
                                        f"{factor.bit_length() - 1} times, so use a multiple of {factor}")
        if key == "image_size":
            _check_trained_image_size(declared, overrides, value)


# ------------------------------------------------------------------------------------------- static check
_REF = re.compile(r"@([A-Za-z0-9_#]+)")


def _expr_problem(expr: str) -> str | None:
    text = expr[1:].strip()
    if text.startswith("import ") or text.startswith("from "):
        try:
            tree = ast.parse(text)
        except SyntaxError:
            return "not valid Python"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            bad = [n for n in names if n.split(".")[0] not in ALLOWED_PACKAGES and n not in ("os.path", "os")]
            if bad:
                return f"imports {bad[0]!r}"
        return None
    text = _REF.sub(lambda m: "_ref_" + m.group(1).replace("#", "_"), text)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return "not valid Python"
    bound = {n.id for node in ast.walk(tree) if isinstance(node, ast.comprehension)
             for n in ast.walk(node.target) if isinstance(n, ast.Name)}
    bound |= {a.arg for node in ast.walk(tree) if isinstance(node, ast.Lambda) for a in ast.walk(node.args)
              if isinstance(a, ast.arg)}  # a lambda's body is checked like the rest
    for node in ast.walk(tree):
        if isinstance(node, (ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
            return f"uses {type(node).__name__.lower()}"
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            return f"reaches the private attribute {node.attr!r}"
        if isinstance(node, ast.keyword) and node.arg == "weights_only" and \
                not (isinstance(node.value, ast.Constant) and node.value.value is True):
            return "loads weights with weights_only other than True"
        if isinstance(node, ast.Name):
            name = node.id
            if name.startswith("_ref_") or name in bound or name in _SAFE_BUILTINS:
                continue
            root = _ALIASES.get(name, name)
            if root not in ALLOWED_PACKAGES and root != "os":
                return f"uses the name {name!r}"
    for node in ast.walk(tree):  # dotted chains: os only as os.path, no blocked callables
        if isinstance(node, ast.Attribute):
            chain = []
            cur: ast.AST = node
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name):
                dotted = ".".join([_ALIASES.get(cur.id, cur.id)] + chain[::-1])
                if dotted.startswith("os.") and dotted not in _OS_ALLOWED and not dotted.startswith("os.path."):
                    return f"uses {dotted!r} (os is limited to os.path, os.makedirs and reading os.environ)"
                if any(dotted == b or dotted.startswith(b + ".") for b in _BLOCKED_CALLS):
                    return f"uses {dotted!r}"
    return None


def _walk_values(obj: Any, path: str = "") -> Iterable[tuple[str, Any, Any]]:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            sub = f"{path}#{k}" if path else str(k)
            yield sub, k, v
            yield from _walk_values(v, sub)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            sub = f"{path}#{i}"
            yield sub, i, v
            yield from _walk_values(v, sub)


def check_config_static(config_files: Sequence[str | Path], bundle_root: str | Path) -> int:
    """Check config files as text (nothing is evaluated); returns the number of expressions checked.

    Raises:
        BundleConfigError: naming the file, the config id and what is refused.
    """
    root = Path(bundle_root).resolve()
    checked = 0
    for f in config_files:
        f = Path(f)
        try:
            data = _load(f)
        except Exception as err:  # noqa: BLE001
            raise BundleConfigError(f"{f.name}: not readable JSON/YAML ({type(err).__name__})") from None
        for where, key, value in _walk_values(data):
            if key == "_target_" and isinstance(value, str):
                top = value.split(".")[0]
                if "." in value and top not in ALLOWED_PACKAGES:
                    raise BundleConfigError(f"{f.name} {where}: component {value!r} is outside "
                                            f"{', '.join(ALLOWED_PACKAGES)}; refused before anything runs")
                if any(value == b or value.startswith(b + ".") for b in _BLOCKED_CALLS):
                    raise BundleConfigError(f"{f.name} {where}: component {value!r} is refused")
            if not isinstance(value, str):
                continue
            if value.startswith("$"):
                checked += 1
                problem = _expr_problem(value)
                if problem:
                    raise BundleConfigError(f"{f.name} {where}: expression {value[:80]!r} {problem}; a shared "
                                            "bundle may only call torch/monai/numpy/busgen code")
            if value.startswith("%"):
                target = value[1:].split("#")[0].split("::")[0]
                if target and (Path(target).is_absolute() or not (root / target).resolve().is_relative_to(root)):
                    raise BundleConfigError(f"{f.name} {where}: reference {value!r} points outside the bundle")
    return checked
