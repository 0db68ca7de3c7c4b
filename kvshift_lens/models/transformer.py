"""Build our transformers: the seeded bare module (`build_module`, what the trainer optimises) and its
TransformerLens 4 `TransformerBridge` (`to_bridge`, `build_model`, what analysis runs), with the mixer
modules mapped as bridge components so their hooks have TL names; accessors shared by every layer above."""

from __future__ import annotations

import copy
import math
from typing import Callable, Union

import torch
import torch.nn as nn

import transformer_lens.model_bridge.sources.native  # noqa: F401  (attaches boot_native)
from transformer_lens import TransformerBridge
from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module, configure_tokenizer
from transformer_lens.model_bridge.sources.native.model import NativeModel
from transformers import PreTrainedTokenizerFast

from kvshift_lens.core.errors import ConfigError
from kvshift_lens.models.layers import MixerAttention, MixerBlock
from kvshift_lens.models.mixers import SLOTS, LagMixer
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.models.vocab_tokenizer import AnyTokenizer, as_hf_tokenizer, synthetic_tokenizer


def build_module(cfg: ModelConfig) -> NativeModel:
    """The bare (hook-free, SDPA) model: what the trainer optimises and checkpoints store."""
    tl_cfg = cfg.tl_config()
    native_cfg = copy.deepcopy(tl_cfg)
    if cfg.positions == "alibi":  # NativeModel knows only learned/rotary; ALiBi lives in attention
        native_cfg.positional_embedding_type = "standard"  # not "rotary": its tables need an even d_head
    model = NativeModel(native_cfg)
    if cfg.positions == "alibi":
        model.pos = None  # no absolute positions either
    for layer in range(cfg.n_layers):
        mixers = cfg.mixer.build(cfg, layer)
        unknown = sorted(set(mixers) - set(SLOTS))
        if unknown:
            raise TypeError(f"mixer {cfg.mixer.name!r} built modules for unknown slot(s) {unknown}; slots: {list(SLOTS)}")
        model.layers[layer] = block = MixerBlock(native_cfg, tl_cfg, cfg, mixers, rotary=model.rotary)
        unplaced = sorted(set(mixers) - set(block.all_mixers()))
        if unplaced:
            raise ConfigError(f"model.mixer={cfg.mixer.name!r} has modules for MLP slot(s) {unplaced} but "
                              f"model.attn_only=true; set model.attn_only=false")
    model.cfg = tl_cfg
    object.__setattr__(model, "kv_cfg", cfg)
    init_weights(model, cfg)
    return model


@torch.no_grad()
def init_weights(model: NativeModel, cfg: ModelConfig) -> None:
    """Seeded init: every matrix N(0, std), std = 0.8/sqrt(d_model) (legacy HookedTransformer
    scale), biases 0, norm gains 1; output projections optionally scaled by 1/sqrt(2·n_layers)
    (TL4's native default). Mixer modules get their own generator (`LagMixer.reset_parameters`),
    so models with different mixers built from one seed share every other weight.
    """
    std = cfg.init_std if cfg.init_std is not None else 0.8 / math.sqrt(cfg.d_model)
    out_std = std / math.sqrt(2 * cfg.n_layers) if cfg.residual_scale else std
    mixers = [m for m in model.modules() if isinstance(m, LagMixer)]
    mixer_params = {id(p) for m in mixers for p in m.parameters()}
    g = torch.Generator().manual_seed(cfg.seed)
    for name, p in model.named_parameters():
        if id(p) in mixer_params:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias":
            p.zero_()
        elif p.dim() == 1:  # norm gains
            p.fill_(1.0)
        else:
            is_out = name.endswith(("attn.o.weight", "mlp.fc_out.weight", "mlp.out.weight"))
            p.copy_(torch.randn(p.shape, generator=g) * (out_std if is_out else std))
    g = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    for module in mixers:
        module.reset_parameters(g)


def no_weight_decay_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters every mixer module excludes from weight decay."""
    return {id(p) for m in model.modules() if isinstance(m, LagMixer) for p in m.no_weight_decay()}


def _add_mixer_components(cfg: ModelConfig, block: MixerBlock) -> Callable[[ArchitectureAdapter], None]:
    """Adapter overlay: map every mixer module as a component with its hook alias, and the
    ALiBi-free positional layout. Names come from `block` (all blocks carry the same slots)."""

    def hook(adapter: ArchitectureAdapter) -> None:
        mapping = adapter.component_mapping
        if cfg.positions == "alibi":
            mapping.pop("pos_embed", None)
        blocks = mapping["blocks"]
        parts = {"attn": (blocks.submodules["attn"], block.attn.mixer_names), "": (blocks, block.mixer_names)}
        if not cfg.attn_only:
            parts["mlp"] = (blocks.submodules["mlp"], block.mlp.mixer_names)
        blocks.hook_aliases = dict(blocks.hook_aliases)
        for path, (component, names) in parts.items():
            component.hook_aliases = dict(component.hook_aliases)
            for slot, name in names.items():
                hook_name = cfg.mixer.hook_name(slot)
                component.submodules[name] = GeneralizedComponent(name=name)
                component.hook_aliases[hook_name] = f"{name}.hook_out"
                blocks.hook_aliases[hook_name] = f"{path}.{name}.hook_out" if path else f"{name}.hook_out"

    return hook


def to_bridge(module: NativeModel) -> TransformerBridge:
    """Wrap a bare model from `build_module` in a TransformerBridge (in place: deep-copy first
    to keep training the bare module), with its attached tokenizer or one over its synthetic vocabulary."""
    cfg: ModelConfig = module.kv_cfg
    tokenizer = getattr(module, "kv_tokenizer", None) or synthetic_tokenizer(cfg.d_vocab)
    bridge = build_bridge_from_module(
        module,
        architecture="TransformerLensNative",
        tl_config=cfg.tl_config(),
        tokenizer=tokenizer,
        model_name=f"kvshift_lens-{cfg.arch}-{cfg.n_layers}L",
        post_adapter_hook=_add_mixer_components(cfg, module.layers[0]),
    )
    object.__setattr__(bridge, "kv_cfg", cfg)
    return bridge.eval()  # analysis mode: TL's patching refuses training-mode models


def build_model(cfg: ModelConfig) -> TransformerBridge:
    """A seeded model with `cfg.mixer` as a TransformerLens `TransformerBridge`."""
    return to_bridge(build_module(cfg))


Model = Union[TransformerBridge, NativeModel]


def model_config(model: Model) -> ModelConfig:
    """The `ModelConfig` a bare module or bridge was built from."""
    cfg = getattr(model, "kv_cfg", None)
    if cfg is None:
        raise TypeError(f"{type(model).__name__} was not built by kvshift_lens.build_model/build_module")
    return cfg


def bare_module(model: Model) -> NativeModel:
    """The underlying `NativeModel` (the bridge keeps it as `original_model`)."""
    return model.original_model if isinstance(model, TransformerBridge) else model


def blocks(model: Model) -> list[MixerBlock]:
    """The bare `MixerBlock` of every layer, in layer order."""
    return [m for m in bare_module(model).modules() if isinstance(m, MixerBlock)]


def attention_layers(model: Model) -> list[MixerAttention]:
    """The `MixerAttention` module of every layer, in layer order."""
    return [m for m in bare_module(model).modules() if isinstance(m, MixerAttention)]


def bare_state_dict(model: Model) -> dict[str, torch.Tensor]:
    """All persistent tensors under bare-module names: -> {name: tensor [*that parameter's/buffer's own shape]}
    (the bridge's own `state_dict()` drops anything not named weight/bias on a mapped component)."""
    root = bare_module(model)
    sd = {}
    for key, value in nn.Module.state_dict(root).items():
        node, alias = root, False
        for part in key.split(".")[:-1]:
            # inside the bridge, a component's real module is `_original_component`; any other
            # child path is an alias (e.g. MLPBridge's `in`/`out` for the native `fc_in`/`fc_out`)
            if isinstance(node, GeneralizedComponent) and part != "_original_component":
                alias = True
                break
            node = getattr(node, part)
        if not alias:
            sd[key.replace("_original_component.", "")] = value
    sd.pop("head.bias", None)  # a fixed zero buffer UnembeddingBridge adds; not a weight of ours
    return sd


@torch.no_grad()
def constrain_(model: Model) -> None:
    """Project every mixer's parameters onto its constraint set (after optimizer steps)."""
    for m in bare_module(model).modules():
        if isinstance(m, LagMixer):
            m.project_()


def attach_tokenizer(model: Model, tokenizer: AnyTokenizer, **special_tokens: str) -> PreTrainedTokenizerFast:
    """Give `model` (a bare module or a bridge) `tokenizer`; `save_model` stores it, `load_model` restores it.

    Returns the `PreTrainedTokenizerFast` attached (see `as_hf_tokenizer` for `special_tokens`). Its
    vocabulary may be smaller than the model's `d_vocab`, never larger.
    """
    hf = as_hf_tokenizer(tokenizer, **special_tokens)
    d_vocab = model_config(model).d_vocab
    if len(hf) > d_vocab:
        raise ValueError(f"the tokenizer has {len(hf)} tokens but the model only {d_vocab} (model.d_vocab)")
    object.__setattr__(bare_module(model), "kv_tokenizer", hf)
    if isinstance(model, TransformerBridge):
        sizes = model.cfg.d_vocab, model.cfg.d_vocab_out
        hf = configure_tokenizer(hf, model.cfg)  # TL's BOS/EOS detection and padding side
        model.tokenizer = hf  # TL then resizes cfg.d_vocab to the tokenizer; the model's own sizes are what count
        model.cfg.d_vocab, model.cfg.d_vocab_out = sizes
    return hf
