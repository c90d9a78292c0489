"""LoRA adaptation of the conditional diffusion network with peft: inject, freeze, save, load, merge.

BUSGen adapts its frozen pretrained generator to a new task (e.g. 34 DCIS cases) by training low-rank adapters
only. Here:

- :func:`inject_lora` puts peft LoRA layers into a :class:`~busgen_monai.networks.ConditionalDiffusionUNet` *in
  place* (the network stays the same class, so MONAI inferers, bundles and our samplers use it unchanged), freezes
  every base weight and leaves only the adapters (and any new condition rows) trainable. The default targets are
  the attention projections (``to_q``, ``to_k``, ``to_v``, ``out_proj``), the residual blocks' convolutions and
  their time/condition projections (``time_emb_proj``).
- :func:`add_condition_values` adds new values of a condition (a new pathology such as ``dcis``, a new device)
  without retraining the base: the condition's embedding table grows by new rows; the old rows stay frozen (their
  gradients are masked) so the base model's behaviour on known conditions is unchanged.
- :func:`adapter_state_dict` / :func:`save_adapter` keep *only* what adaptation trained (LoRA matrices, new
  condition rows) plus the LoRA config and the base model's hash; :func:`load_adapter` re-applies them to a base.
- :func:`merge_lora` folds the adapters into the base weights and returns a plain network (no peft layers).

peft imports transformers, which is slow; it is imported only when LoRA is used.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..safe_load import load_weights
from ..utils.io import atomic_torch_save

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "save_peft_adapter",
    "load_peft_adapter",
    "PEFT_PROJECT_FILE",
    "inject_lora",
    "add_condition_values",
    "ExtendedEmbedding",
    "trainable_parameters",
    "trainable_fraction",
    "adapter_state_dict",
    "save_adapter",
    "load_adapter",
    "merge_lora",
    "state_dict_sha256",
]

#: regular expression over module names (peft matches it with ``re.fullmatch``)
DEFAULT_TARGET_MODULES = (
    r".*(attn\.(to_q|to_k|to_v|out_proj)"
    r"|resnets\.\d+\.(conv1|conv2)\.conv"
    r"|resnet_\d\.(conv1|conv2)\.conv"
    r"|time_emb_proj)"
)
_EXTRA_KEY = "busgen_extra"


def state_dict_sha256(module_or_state: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names and tensor bytes: identifies the *base* model independent of file format.

    LoRA tensors and new condition rows are left out and peft's ``base_layer.`` / our ``base_weight`` names are
    mapped back to the plain names, so a base network hashes the same before and after adaptation layers are added.
    """
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    plain = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor) or "lora_" in name or name.endswith("new_weight"):
            continue
        name = name.replace(".base_layer.", ".")
        if name.endswith(".base_weight"):
            name = name[: -len("base_weight")] + "weight"
        plain[name] = t
    h = hashlib.sha256()
    for name in sorted(plain):
        t = plain[name]
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _lora_config(rank: int, alpha: float, dropout: float, target_modules: str | Sequence[str]):
    from peft import LoraConfig

    return LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=float(dropout),
                      target_modules=target_modules, bias="none")


def inject_lora(
    network: nn.Module,
    rank: int = 8,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: str | Sequence[str] = DEFAULT_TARGET_MODULES,
    adapter_name: str = "default",
) -> nn.Module:
    """Inject LoRA adapters in place and freeze the base; returns ``network``.

    Args:
        network: the base network (weights already loaded).
        rank: LoRA rank ``r``.
        alpha: LoRA ``alpha`` (scaling ``alpha / r``); default ``r`` (scaling 1).
        dropout: dropout on the LoRA input.
        target_modules: a regex over module names, or a list of module-name suffixes.
        adapter_name: peft adapter name.
    """
    from peft import inject_adapter_in_model

    config = _lora_config(rank, alpha if alpha is not None else rank, dropout, target_modules)
    base_hash = state_dict_sha256(network)
    for p in network.parameters():
        p.requires_grad_(False)
    try:
        inject_adapter_in_model(config, network, adapter_name=adapter_name)
    except ValueError as err:
        raise ValueError(f"LoRA target_modules {target_modules!r} match no layer of {type(network).__name__}: {err}") from err
    for name, p in network.named_parameters():
        p.requires_grad_("lora_" in name)
    for module in network.modules():
        if isinstance(module, ExtendedEmbedding):
            module.new_weight.requires_grad_(True)
    network._busgen_lora = {"rank": int(rank), "alpha": float(alpha if alpha is not None else rank),
                            "dropout": float(dropout), "target_modules": target_modules,
                            "adapter_name": adapter_name, "base_sha256": base_hash}
    return network


def _condition_table(network: nn.Module, condition: str) -> nn.Embedding:
    emb = getattr(network, "condition_embedding", None)
    tables = getattr(emb, "tables", None)
    if tables is None or condition not in tables:
        have = list(tables) if tables is not None else []
        raise KeyError(f"the network has no {condition!r} condition table (it has {have})")
    return tables[condition]


class ExtendedEmbedding(nn.Module):
    """An embedding table whose first rows are the frozen base rows and whose last rows are new and trainable.

    Keeping the two apart (a buffer and a parameter) guarantees the base rows never change, whatever the optimiser
    (AdamW's decoupled weight decay would move rows whose gradient is merely zero). Behaves like ``nn.Embedding``
    (``num_embeddings``, ``embedding_dim``, ``padding_idx``, ``weight``); :func:`merge_lora` turns it back into one.
    """

    def __init__(self, base: nn.Embedding, n_new: int, init: str = "mean") -> None:
        super().__init__()
        self.padding_idx = base.padding_idx
        self.register_buffer("base_weight", base.weight.detach().clone())
        n_old, dim = base.weight.shape
        fill = base.weight.detach()[1:].mean(0) if (init == "mean" and n_old > 1) else torch.zeros(dim)
        self.new_weight = nn.Parameter(fill.to(base.weight).expand(n_new, dim).clone())

    @property
    def num_embeddings(self) -> int:
        return self.base_weight.shape[0] + self.new_weight.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.base_weight.shape[1]

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.base_weight, self.new_weight], dim=0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight, self.padding_idx)

    def to_embedding(self) -> nn.Embedding:
        emb = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx)
        emb = emb.to(self.base_weight.device, self.base_weight.dtype)
        with torch.no_grad():
            emb.weight.copy_(self.weight)
        return emb


def add_condition_values(network: nn.Module, condition: str, n_new: int, init: str = "mean") -> list[int]:
    """Grow a condition's embedding table by ``n_new`` rows; returns the new ids.

    The new rows start at the mean of the existing non-null rows (``init="mean"``) or at zero and are trainable;
    the old rows are kept as a frozen buffer (:class:`ExtendedEmbedding`), so the base model's behaviour on known
    condition values cannot change.
    """
    if n_new < 1:
        raise ValueError(f"n_new must be >= 1, got {n_new}")
    old = _condition_table(network, condition)
    if isinstance(old, ExtendedEmbedding):
        old = old.to_embedding()
    n_old = old.weight.shape[0]
    new = ExtendedEmbedding(old, n_new, init)
    network.condition_embedding.tables[condition] = new
    counts = getattr(network, "_busgen_base_rows", {})
    counts.setdefault(condition, n_old)
    network._busgen_base_rows = counts
    return list(range(n_old, n_old + n_new))


def trainable_parameters(network: nn.Module) -> int:
    """Parameters adaptation trains: LoRA matrices and new condition rows only."""
    return sum(p.numel() for name, p in network.named_parameters()
               if p.requires_grad and ("lora_" in name or name.endswith("new_weight")))


def trainable_fraction(network: nn.Module) -> float:
    """Trainable parameters (see :func:`trainable_parameters`) over the base model's parameters."""
    base = sum(p.numel() for name, p in network.named_parameters() if "lora_" not in name and not name.endswith("new_weight"))
    base += sum(b.numel() for name, b in network.named_buffers() if name.endswith("base_weight"))
    return trainable_parameters(network) / max(base, 1)


def adapter_state_dict(network: nn.Module) -> dict[str, Any]:
    """What adaptation trained: LoRA tensors, new condition rows, the LoRA config and the base hash."""
    info = getattr(network, "_busgen_lora", None)
    if info is None:
        raise ValueError("the network has no LoRA adapters; call inject_lora first")
    lora = {k: v.detach().cpu().clone() for k, v in network.state_dict().items() if "lora_" in k}
    base_rows = getattr(network, "_busgen_base_rows", {})
    rows = {c: _condition_table(network, c).new_weight.detach().cpu().clone() for c in base_rows}
    return {"lora": lora, "new_condition_rows": rows, "base_condition_rows": dict(base_rows), "config": dict(info)}


def save_adapter(network: nn.Module, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Save :func:`adapter_state_dict` (plus ``extra``, e.g. the extended condition codec) atomically."""
    state = adapter_state_dict(network)
    if extra:
        state[_EXTRA_KEY] = dict(extra)
    return atomic_torch_save(state, path)


def load_adapter(network: nn.Module, adapter: str | os.PathLike | Mapping[str, Any], check_base: bool = True) -> nn.Module:
    """Apply a saved adapter to a base network (in place): grow condition tables, inject LoRA, load tensors.

    Raises a clear error when the base network's hash differs from the one the adapter was trained on
    (``check_base=False`` skips the check).
    """
    state = load_weights(adapter, "LoRA adapter") if not isinstance(adapter, Mapping) else adapter
    cfg = state["config"]
    base_hash = state_dict_sha256(network)
    if check_base and cfg.get("base_sha256") and cfg["base_sha256"] != base_hash:
        raise ValueError(
            f"adapter was trained on base model {cfg['base_sha256'][:12]}..., but this base is {base_hash[:12]}...; "
            "load the matching base weights (or pass check_base=False)")
    for cond, rows in state.get("new_condition_rows", {}).items():
        have = _condition_table(network, cond).weight.shape[0]
        expected = state["base_condition_rows"][cond]
        if have != expected:
            raise ValueError(f"{cond} table has {have} rows, the adapter expects a base with {expected}")
        add_condition_values(network, cond, rows.shape[0])
        with torch.no_grad():
            network.condition_embedding.tables[cond].new_weight.copy_(rows)
    inject_lora(network, cfg["rank"], cfg["alpha"], cfg["dropout"], cfg["target_modules"], cfg["adapter_name"])
    network._busgen_lora["base_sha256"] = cfg.get("base_sha256", base_hash)
    missing = [k for k in state["lora"] if k not in network.state_dict()]
    network._busgen_base_rows = dict(state.get("base_condition_rows", {}))
    if missing:
        raise ValueError(f"adapter tensors do not fit this network (e.g. {missing[:3]})")
    network.load_state_dict(state["lora"], strict=False)
    return network


#: the project's side file next to peft's two files: base hash, condition rows added by adaptation, extra metadata
PEFT_PROJECT_FILE = "busgen_adapter.json"
_ROWS_FILE = "busgen_condition_rows.safetensors"


def save_peft_adapter(network: nn.Module, folder: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Save the adapter in peft's own format, so peft users can load it without this project.

    ``folder`` gets peft's ``adapter_config.json`` (a ``LoraConfig``) and ``adapter_model.safetensors`` (peft's
    adapter state dict, keys without the adapter name), plus :data:`PEFT_PROJECT_FILE` (JSON: base sha256, the
    condition rows each table had in the base, ``extra`` such as the extended condition codec) and, when
    adaptation added condition values, ``busgen_condition_rows.safetensors`` (the new embedding rows: not LoRA,
    so outside peft's format). With peft alone: ``inject_adapter_in_model(LoraConfig.from_pretrained(folder),
    net)`` then ``set_peft_model_state_dict(net, safetensors.torch.load_file(folder/'adapter_model.safetensors'))``
    on a base network with the same condition tables; :func:`load_peft_adapter` does both and the rows.
    No pickle anywhere: JSON and safetensors only.
    """
    import json

    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from ..utils.io import atomic_write_bytes, atomic_write_text

    info = getattr(network, "_busgen_lora", None)
    if info is None:
        raise ValueError("the network has no LoRA adapters; call inject_lora first")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = info["adapter_name"]
    config = network.peft_config[name]
    config_dict = config.to_dict()
    config_dict["target_modules"] = (sorted(config_dict["target_modules"]) if isinstance(config_dict["target_modules"],
                                     (set, list, tuple)) else config_dict["target_modules"])
    config_dict["peft_type"] = str(getattr(config.peft_type, "value", config.peft_type))
    config_dict["task_type"] = None
    atomic_write_text(folder / "adapter_config.json", json.dumps(config_dict, indent=2, default=str))
    weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(network, adapter_name=name).items()}
    tmp = folder / ".adapter_model.safetensors.tmp"
    save_file(weights, str(tmp), metadata={"format": "pt"})
    atomic_write_bytes(folder / "adapter_model.safetensors", tmp.read_bytes())
    tmp.unlink()
    base_rows = dict(getattr(network, "_busgen_base_rows", {}))
    if base_rows:
        rows = {c: _condition_table(network, c).new_weight.detach().cpu().contiguous() for c in base_rows}
        tmp = folder / f".{_ROWS_FILE}.tmp"
        save_file(rows, str(tmp))
        atomic_write_bytes(folder / _ROWS_FILE, tmp.read_bytes())
        tmp.unlink()
    project = {"format": "busgen-peft-adapter/1", "base_sha256": info.get("base_sha256"),
               "adapter_name": name, "base_condition_rows": base_rows, "extra": dict(extra or {})}
    atomic_write_text(folder / PEFT_PROJECT_FILE, json.dumps(project, indent=2, default=str))
    return folder


def load_peft_adapter(network: nn.Module, folder: str | os.PathLike, check_base: bool = True) -> nn.Module:
    """Apply an adapter saved by :func:`save_peft_adapter` to a base network (in place): the condition rows first,
    then peft's ``LoraConfig`` + weights. Refuses a base whose hash differs from the one recorded."""
    import json

    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    for need in ("adapter_config.json", "adapter_model.safetensors", PEFT_PROJECT_FILE):
        if not (folder / need).is_file():
            raise FileNotFoundError(f"{folder} is not a peft adapter folder: {need} is missing")
    project = json.loads((folder / PEFT_PROJECT_FILE).read_text())
    base_hash = state_dict_sha256(network)
    if check_base and project.get("base_sha256") and project["base_sha256"] != base_hash:
        raise ValueError(f"adapter in {folder} was trained on base model {project['base_sha256'][:12]}..., but this "
                         f"base is {base_hash[:12]}...; load the matching base weights (or pass check_base=False)")
    if (folder / _ROWS_FILE).is_file():
        rows = load_file(str(folder / _ROWS_FILE))
        for cond, expected in project.get("base_condition_rows", {}).items():
            have = _condition_table(network, cond).weight.shape[0]
            if have != expected:
                raise ValueError(f"{cond} table has {have} rows, the adapter expects a base with {expected}")
            add_condition_values(network, cond, rows[cond].shape[0])
            with torch.no_grad():
                network.condition_embedding.tables[cond].new_weight.copy_(rows[cond])
    config = LoraConfig.from_pretrained(str(folder))
    inject_lora(network, config.r, config.lora_alpha, config.lora_dropout,
                config.target_modules if isinstance(config.target_modules, str) else sorted(config.target_modules),
                project.get("adapter_name", "default"))
    network._busgen_lora["base_sha256"] = project.get("base_sha256") or base_hash
    network._busgen_base_rows = dict(project.get("base_condition_rows", {}))
    result = set_peft_model_state_dict(network, load_file(str(folder / "adapter_model.safetensors")),
                                       adapter_name=project.get("adapter_name", "default"))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"adapter tensors in {folder} do not fit this network (e.g. {unexpected[:3]})")
    return network


def merge_lora(network: nn.Module) -> nn.Module:
    """Fold LoRA into the base weights, remove the peft layers; returns the plain network (in place)."""
    from peft.tuners.lora import LoraLayer

    replaced = 0
    for name, module in list(network.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = network.get_submodule(parent_name) if parent_name else network
        setattr(parent, child, module.get_base_layer())
        replaced += 1
    if replaced == 0:
        raise ValueError("merge_lora: the network has no LoRA layers")
    tables = getattr(getattr(network, "condition_embedding", None), "tables", {})
    for cond in list(tables.keys()):
        if isinstance(tables[cond], ExtendedEmbedding):
            tables[cond] = tables[cond].to_embedding()
    for p in network.parameters():
        p.requires_grad_(True)
    for attr in ("_busgen_lora", "_busgen_base_rows"):
        if hasattr(network, attr):
            delattr(network, attr)
    return network
