"""`ModelConfig`: every architectural knob of a kvshift_lens model, the local mixer included
(importable without transformer_lens, so configs are checked before the heavy imports)."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional

from kvshift_lens.core.errors import ConfigError
from kvshift_lens.models.mixers.base import MIXERS, MixerOptions
from kvshift_lens.core.schema import build

if TYPE_CHECKING:
    from transformer_lens.config import TransformerBridgeConfig

NORMS = {"layernorm": "LN", "rmsnorm": "RMS", "none": None}
POSITIONS = ("learned", "rotary", "alibi")
MLPS = {"gelu": ("gelu", False), "swiglu": ("silu", True)}
LEGACY_FIELDS = ("arch", "shift", "shift_param", "shift_window")  # the flat layout before mixers
ARCH_NAMES = {"none": "vanilla", "kv_shift": "kvshift"}  # mixer name -> the `arch` reports are keyed on


def arch_name(mixer_name: str) -> str:
    """The derived `model.arch` of a mixer: "vanilla" (none), "kvshift" (kv_shift), else the mixer name."""
    return ARCH_NAMES.get(mixer_name, mixer_name)


def upgrade_legacy(data: dict) -> dict:
    """A model config mapping in the pre-mixer flat layout (`arch`, `shift`, `shift_param`,
    `shift_window`) rewritten with the equivalent `mixer`; other mappings are returned unchanged."""
    if not any(k in data for k in LEGACY_FIELDS):
        return data
    data = dict(data)
    if "mixer" in data:
        raise ConfigError(f"model config mixes the legacy field(s) {[k for k in LEGACY_FIELDS if k in data]} with "
                          f"model.mixer; keep only model.mixer (e.g. model/mixer=kv_shift model.mixer.sides=k)")
    legacy = {k: data.pop(k) for k in LEGACY_FIELDS if k in data}
    arch = legacy.get("arch", "kvshift")
    if arch == "vanilla":
        data["mixer"] = {"name": "none"}
    elif arch == "kvshift":
        data["mixer"] = {"name": "kv_shift", "sides": legacy.get("shift", "kv"),
                         "param": legacy.get("shift_param", "free"), "window": legacy.get("shift_window", 1)}
    else:
        raise ConfigError(f"model.arch={arch!r} (legacy field) is not supported; choose a mixer instead: "
                          f"model/mixer=<one of {MIXERS.names()}> (none = vanilla)")
    return data


def legacy_replacement(mixer: dict) -> str:
    """How to write an upgraded legacy mixer today, in Python and on the command line."""
    options = " ".join(f"model.mixer.{k}={v}" for k, v in mixer.items() if k != "name")
    return f"ModelConfig(mixer={mixer!r}) (command line: model/mixer={mixer['name']} {options})".replace(" )", ")")


def _accepting_legacy_fields(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap `ModelConfig.__init__` so the pre-mixer keywords (`arch`, `shift`, `shift_param`, `shift_window`)
    still construct, upgraded by `upgrade_legacy` as config files are, with a DeprecationWarning naming the
    replacement."""

    @functools.wraps(init)
    def __init__(self: "ModelConfig", *args: Any, **kwargs: Any) -> None:
        legacy = [k for k in LEGACY_FIELDS if k in kwargs]
        if legacy:
            kwargs = upgrade_legacy(kwargs)
            warnings.warn(f"ModelConfig({', '.join(f'{k}=...' for k in legacy)}) is deprecated: use "
                          f"{legacy_replacement(kwargs['mixer'])}", DeprecationWarning, stacklevel=2)
        init(self, *args, **kwargs)

    return __init__


def _default_mixer() -> MixerOptions:
    return MIXERS.get("kv_shift")()


@dataclass
class ModelConfig:
    """Every architectural knob of a kvshift_lens model (also the hydra `model` group schema)."""

    mixer: MixerOptions = field(default_factory=_default_mixer)  # local token mixer and its options (none = vanilla)
    n_layers: int = 1  # transformer blocks
    d_model: int = 64  # residual stream width D
    n_heads: int = 4  # query heads per layer
    d_head: Optional[int] = None  # per-head width d; None -> d_model // n_heads
    n_kv_heads: Optional[int] = None  # KV heads (GQA); None -> n_heads
    d_vocab: int = 64  # vocabulary size
    n_ctx: int = 64  # longest sequence the model accepts
    attn_only: bool = True  # drop the MLPs
    mlp: Literal["gelu", "swiglu"] = "gelu"  # MLP kind (ignored when attn_only)
    d_mlp: Optional[int] = None  # MLP hidden width; None -> 4 * d_model
    norm: Literal["layernorm", "rmsnorm", "none"] = "layernorm"
    positions: Literal["learned", "rotary", "alibi"] = "learned"  # learned absolute | rotary | ALiBi
    init_std: Optional[float] = None  # N(0, std) for all matrices; None -> 0.8 / sqrt(d_model)
    residual_scale: bool = False  # scale output projections by 1/sqrt(2·n_layers) (TL4 native default)
    seed: int = 0  # seeds every weight, mixer weights included (from their own generator)

    def __post_init__(self) -> None:
        if not isinstance(self.mixer, MixerOptions):  # a name or a mapping, e.g. ModelConfig(mixer="canon")
            self.mixer = build(MixerOptions, self.mixer, "model.mixer")
        if self.d_head is None and self.n_heads > 0:
            self.d_head = self.d_model // self.n_heads if self.d_model % self.n_heads == 0 else None
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first field that cannot work and how to fix it."""
        choices = {"norm": tuple(NORMS), "positions": POSITIONS, "mlp": tuple(MLPS)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"model.{name}={getattr(self, name)!r} is not supported; use one of {list(allowed)}"
                )
        for name in ("n_layers", "d_model", "n_heads", "d_vocab", "n_ctx"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be >= 1")
        if self.d_head is None:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; "
                f"pick n_heads dividing d_model or set model.d_head explicitly"
            )
        if self.d_head < 1:
            raise ConfigError(f"model.d_head={self.d_head} must be >= 1")
        if self.positions == "rotary" and self.d_head % 2:
            raise ConfigError(f"model.d_head={self.d_head} must be even for positions=rotary")
        kv = self.n_kv_heads or self.n_heads
        if kv < 1 or self.n_heads % kv:
            raise ConfigError(
                f"model.n_kv_heads={self.n_kv_heads} must divide model.n_heads={self.n_heads}"
            )
        if self.d_mlp is not None and self.d_mlp < 1:
            raise ConfigError(f"model.d_mlp={self.d_mlp} must be >= 1 (or null for 4 * d_model)")
        if self.init_std is not None and self.init_std <= 0:
            raise ConfigError(f"model.init_std={self.init_std} must be > 0 (or null for the default)")
        self.mixer.validate()
        self.mixer.check_model(self)

    @property
    def arch(self) -> str:
        """"vanilla" (no mixer), "kvshift" (kv_shift) or the mixer's name: what reports group by."""
        return arch_name(self.mixer.name)

    @property
    def kv_heads(self) -> int:
        """Number of KV heads (= n_heads without GQA); K/V mixers act per KV head."""
        return self.n_kv_heads or self.n_heads

    @property
    def mlp_width(self) -> int:
        """MLP hidden width (d_mlp, default 4 * d_model)."""
        return self.d_mlp or 4 * self.d_model

    def to_dict(self) -> dict:
        """Plain nested mapping (config.json, checkpoint metadata): `mixer` is {"name": ..., <options>}."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "ModelConfig":
        """Build from a mapping (a hydra node, config.json, checkpoint metadata), legacy flat layout
        included; unknown keys and bad values raise one-line `ConfigError`s."""
        return build(cls, d, "model", upgrade=upgrade_legacy)

    def tl_config(self) -> "TransformerBridgeConfig":
        """The TransformerLens config the bridge and the native blocks are built from."""
        from transformer_lens.config import TransformerBridgeConfig

        act_fn, gated = MLPS[self.mlp]
        return TransformerBridgeConfig(
            d_model=self.d_model,
            d_head=self.d_head,
            n_layers=self.n_layers,
            n_ctx=self.n_ctx,
            n_heads=self.n_heads,
            d_vocab=self.d_vocab,
            d_mlp=self.mlp_width,
            n_key_value_heads=self.n_kv_heads,
            attn_only=self.attn_only,
            act_fn=act_fn,
            gated_mlp=gated,
            normalization_type=NORMS[self.norm],
            positional_embedding_type="standard" if self.positions == "learned" else self.positions,
            architecture="TransformerLensNative",
            default_prepend_bos=True,  # string inputs (tokenizer tools) start with [BOS], like the tasks
            seed=self.seed,
        )


ModelConfig.__init__ = _accepting_legacy_fields(ModelConfig.__init__)  # type: ignore[method-assign]
