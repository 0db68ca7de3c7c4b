"""Model checkpoints: one safetensors file per model, no pickle, verified on load.

The metadata holds the format tag, the `ModelConfig` as JSON, the sha256 of the tensors (names,
dtypes, shapes and bytes; `state_sha256`) and, when one was attached with `attach_tokenizer`, the
tokenizer. Metadata keys are written in sorted order, so saving the same weights twice gives
byte-identical files (safetensors itself writes them in hash-map order).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from transformer_lens import TransformerBridge

from kvshift_lens.core.registry import import_plugins
from kvshift_lens.models.transformer import Model, bare_module, bare_state_dict, build_module, model_config, to_bridge
from kvshift_lens.models.config import ModelConfig, upgrade_legacy
from kvshift_lens.models.mixers.base import MIXERS
from kvshift_lens.models.vocab_tokenizer import tokenizer_from_json, tokenizer_to_json

CHECKPOINT_FORMAT = "kvshift_lens.model/2"
UNCHECKED_FORMATS = ("kvshift_lens.model/1",)  # written before checksums; still loads
PathLike = Union[str, Path]
ZIP_MAGIC = b"PK\x03\x04"  # torch.save files (the trainer's resume.pt) are zip archives


def state_sha256(state: Any) -> str:
    """sha256 of a (nested dict/list of) tensors and plain values: tensor names, dtypes, shapes and bytes."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"<{t.dtype}{tuple(t.shape)}>".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(x, Mapping):
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"[{len(x)}]".encode())
            for v in x:
                walk(v)
        else:
            h.update(repr(x).encode())

    walk(state)
    return h.hexdigest()


def write_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], path: PathLike) -> Path:
    """Write a safetensors file atomically, its metadata keys in sorted order (byte-reproducible)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = save_bytes(dict(tensors), metadata=dict(metadata))
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)},
              **{k: v for k, v in header.items() if k != "__metadata__"}}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data section to 8 bytes
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(len(text).to_bytes(8, "little") + text + blob[8 + n :])
    os.replace(tmp, path)
    return path


def save_model(model: Model, path: PathLike) -> Path:
    """Write config, weights, their sha256 and any attached tokenizer to one safetensors file."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in bare_state_dict(model).items()}
    meta = {"format": CHECKPOINT_FORMAT, "config": json.dumps(model_config(model).to_dict(), sort_keys=True),
            "sha256": state_sha256(tensors)}
    tokenizer = getattr(bare_module(model), "kv_tokenizer", None)
    if tokenizer is not None:
        meta["tokenizer"] = tokenizer_to_json(tokenizer)
    return write_safetensors(tensors, meta, path)


def read_checkpoint(path: PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, str]]:
    """Config, tensors and metadata of a kvshift_lens safetensors file (checksum verified), or one clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model checkpoint at {path}: check the path (files are *.safetensors)")
    raw = path.read_bytes()
    if raw[:4] == ZIP_MAGIC:
        raise ValueError(not_a_model(path))
    try:
        tensors = load_bytes(raw)
        meta = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")]).get("__metadata__") or {}
    except (SafetensorError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors checkpoint ({e}); it is corrupt or "
                         f"not a kvshift_lens model: re-save it with kvshift_lens.save_model") from None
    if meta.get("format") not in (CHECKPOINT_FORMAT, *UNCHECKED_FORMATS):
        raise ValueError(f"{path} is a safetensors file but not a kvshift_lens model "
                         f"(format={meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r})")
    try:
        mixer = unregistered_mixer(json.loads(meta["config"]))
    except (KeyError, ValueError, TypeError, AttributeError):
        mixer = None  # reported below, as an unreadable config
    if mixer is not None:
        raise ValueError(f"{path}: mixer {mixer!r} is not registered: import its module or pass "
                         f"plugins=['<its module>'] (load_model, experiments.train/detect)")
    try:
        cfg = ModelConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError, TypeError) as e:  # ConfigError and JSONDecodeError are ValueErrors
        raise ValueError(f"{path} has no valid kvshift_lens model config in its metadata ({e!r}); "
                         f"the file is corrupt or was edited: re-save it with kvshift_lens.save_model") from None
    if meta["format"] == CHECKPOINT_FORMAT and meta.get("sha256") != state_sha256(tensors):
        raise ValueError(f"{path} is corrupt: its tensors do not match the sha256 saved with them "
                         f"(re-create it, e.g. re-run its training)")
    return cfg, tensors, meta


def not_a_model(path: Path) -> str:
    """Why a torch.save file (the trainer's resume.pt) is not a model checkpoint, and which file to load instead."""
    saved = sorted((path.parent / "checkpoints").glob("step_*.safetensors"))
    instead = f"load_model('{saved[-1]}')" if saved else "load_model('<run dir>/checkpoints/step_*.safetensors')"
    what = "a resume state (the trainer's model + optimizer state)" if path.name == "resume.pt" else "a torch.save file"
    return f"{path} is {what}, not a model checkpoint: load a model with {instead}"


def unregistered_mixer(config: Mapping[str, Any]) -> Optional[str]:
    """The mixer name of a saved model config when no module has registered it (else None)."""
    mixer = upgrade_legacy(dict(config)).get("mixer", {"name": "kv_shift"})
    name = mixer if isinstance(mixer, str) else mixer.get("name")
    return name if isinstance(name, str) and name not in MIXERS else None


def load_model(path: PathLike, device: Union[str, torch.device, None] = None,
               plugins: Sequence[str] = ()) -> TransformerBridge:
    """Rebuild the bridge saved by `save_model`: bit-identical weights, its tokenizer attached. `plugins`:
    modules to import first, e.g. the one registering the checkpoint's own mixer (`["my_pkg.my_mixer"]`)."""
    import_plugins(plugins)
    cfg, tensors, meta = read_checkpoint(path)
    module = build_module(cfg)
    try:
        missing, unexpected = module.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # size mismatch between the file's tensors and its config
        raise ValueError(f"{path} does not match its own config ({e}); the file is corrupt or was edited") from None
    if missing or unexpected:
        raise ValueError(f"{path} does not match its own config: missing {missing}, unexpected "
                         f"{unexpected}; the file is corrupt or was edited")
    if "tokenizer" in meta:
        try:
            object.__setattr__(module, "kv_tokenizer", tokenizer_from_json(meta["tokenizer"]))
        except Exception as e:  # noqa: BLE001  (tokenizers raises its own exception types)
            raise ValueError(f"{path} has an unreadable tokenizer in its metadata ({e}); the file was edited") from None
    return to_bridge(module.to(device) if device is not None else module)
