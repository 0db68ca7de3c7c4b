"""Apply `Intervention`s: forward hooks on the bare (SDPA) module the trainer optimises, and the same edits as
`run_with_hooks` hooks on its `TransformerBridge`, so a run trained under an intervention computes what the bridge
computes under that hook edit.

Where each hook name acts on the bare module (the bridge fires the same hook at the same point):

| hook | bare module | value |
|---|---|---|
| `blocks.{l}.attn.hook_pattern` | `pattern_fn` handed to the attention, which then takes its explicit softmax path | [batch, head, q, k] |
| `blocks.{l}.attn.hook_{q,k,v}` | output of the Q/K/V projection, viewed per head | [batch, pos, head, d_head] |
| `blocks.{l}.attn.hook_z` | input of the output projection, viewed per head | [batch, pos, head, d_head] |
| a mixer's output hook | output of the mixer module | [batch, pos, *feature] |
| `<mixer component>.coefficients` | the mixer's `lag_coefficients()` (no bridge hook point: read there on both paths) | [lags, *feature] |

Parameters "behind" a hook (what `freeze` holds): the Q and K projections and the mixers on their path for
hook_pattern; every attention parameter but the output projection for hook_z; the projection for hook_q/k/v; the
mixer's own parameters for its output and coefficients. With `heads`, only those heads' rows (the KV head serving a
query head, under GQA); parameters shared by all heads (a mixer on d_model) are then left free.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn

from kvshift_lens.core.errors import ConfigError
from kvshift_lens.models.transformer import Model, attention_layers, blocks, model_config
from kvshift_lens.training.interventions import Intervention
from kvshift_lens.training.patterns import induction_pattern, previous_token_pattern, uniform_pattern

Edit = Callable[[torch.Tensor], torch.Tensor]
QK_PATH = {"q": ("x", "q_input", "q"), "k": ("x", "k_input", "k"), "v": ("x", "v_input", "v")}  # mixer slots per side


def _unwrap(module: nn.Module) -> nn.Module:
    """The wrapped module of a bridge component (the module itself in a bare model)."""
    return getattr(module, "original_component", module)


@dataclass
class Behind:
    """A parameter behind a hook; `rows` rows of its first axis per head (None: shared by every head), and the
    divisor mapping the hook's head index to the parameter's (query head -> KV head under GQA)."""

    param: nn.Parameter
    rows: Optional[int] = None
    divisor: int = 1


@dataclass
class Site:
    """Where a hook name acts: `kind` (pattern, output, input, coefficients) on `module`, the head axis of its value
    (None: no heads), the per-head split of a flat [batch, pos, heads·d_head] value, and the parameters behind it."""

    kind: str
    module: nn.Module
    head_dim: Optional[int]
    split: Optional[tuple[int, int]] = None
    behind: list[Behind] = field(default_factory=list)


def hook_sites(model: Model) -> dict[str, Site]:
    """Every hook name an intervention can act on in `model` (bare module or bridge) -> its `Site`."""
    cfg = model_config(model)
    repeats = cfg.n_heads // cfg.kv_heads
    sites: dict[str, Site] = {}
    for layer, (block, attn) in enumerate(zip(blocks(model), attention_layers(model))):
        mixers = attn.mixers()
        proj = {side: _unwrap(getattr(attn, side)) for side in "qkv"}

        def path(side: str, divisor: int) -> list[Behind]:
            """The projection of `side` and the attention mixers on its path, heads indexed through `divisor`."""
            found = [Behind(p, cfg.d_head, divisor) for p in proj[side].parameters()]
            for slot in QK_PATH[side]:
                if slot in mixers:
                    rows = 1 if slot in "qkv" else None
                    found += [Behind(p, rows, divisor) for p in mixers[slot].parameters()]
            return found

        prefix = f"blocks.{layer}.attn."
        sites[prefix + "hook_pattern"] = Site("pattern", attn, 1, behind=path("q", 1) + path("k", repeats))
        for side, heads in (("q", cfg.n_heads), ("k", cfg.kv_heads), ("v", cfg.kv_heads)):
            sites[prefix + f"hook_{side}"] = Site("output", proj[side], 2, (heads, cfg.d_head),
                                                  [Behind(p, cfg.d_head) for p in proj[side].parameters()])
        sites[prefix + "hook_z"] = Site("input", _unwrap(attn.o), 2, (cfg.n_heads, cfg.d_head),
                                        path("q", 1) + path("k", repeats) + path("v", repeats))
        parts = [("attn.", attn), ("", block)] + ([] if cfg.attn_only else [("mlp.", _unwrap(block.mlp))])
        for part, owner in parts:
            for slot, name in owner.mixer_names.items():
                mixer = _unwrap(getattr(owner, name))
                per_head = slot in ("q", "k", "v")
                behind = [Behind(p, 1 if per_head else None) for p in mixer.parameters()]
                output = Site("output", mixer, 2 if per_head else None, behind=behind)
                hook = cfg.mixer.hook_name(slot)
                sites[f"blocks.{layer}.{part}{hook}"] = sites[f"blocks.{layer}.{hook}"] = output
                sites[f"blocks.{layer}.{part}{name}.coefficients"] = Site("coefficients", mixer, 1 if per_head else None,
                                                                          behind=behind)
    return sites


class Bound:
    """One intervention checked against a model and turned into an edit of the hooked value."""

    def __init__(self, iv: Intervention, site: Site, shape: tuple[int, ...], device: torch.device):
        self.iv, self.site = iv, site
        batched = site.kind != "coefficients"
        if iv.heads is not None:
            if site.head_dim is None:
                raise ConfigError(f"{iv.where}.heads={iv.heads}: this hook has no head axis (shape {list(shape)}); "
                                  f"drop heads")
            n = shape[site.head_dim]
            if not all(0 <= h < n for h in iv.heads):
                raise ConfigError(f"{iv.where}.heads={iv.heads}: out of range, the hook has {n} heads (0..{n - 1})")
        self.value: Optional[torch.Tensor] = None
        if isinstance(iv.value, (int, float, list)):
            try:
                self.value = torch.tensor(iv.value, dtype=torch.float32, device=device)
            except (ValueError, TypeError):
                raise ConfigError(f"{iv.where}.value: expected a number or a rectangular nested list") from None
            expected = shape[1:] if batched else shape
            fits = self.value.dim() <= len(expected) and all(
                v in (1, e) for v, e in zip(reversed(self.value.shape), reversed(expected)))
            if not fits:
                where = "without the batch axis " if batched else ""
                raise ConfigError(f"{iv.where}.value has shape {list(self.value.shape)}, which does not broadcast to "
                                  f"the hook's shape {where}{list(expected)}")
        self.mask = self._mask(shape, device)
        self.replaces_all = iv.heads is None and iv.value != "shift_off"
        self._patterns: dict[int, torch.Tensor] = {}

    def _mask(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Bool mask broadcasting against the value: the selected heads (and lags ≥ 1 for shift_off)."""
        mask = torch.ones([1] * len(shape), dtype=torch.bool, device=device)
        if self.iv.heads is not None:
            heads = torch.zeros(shape[self.site.head_dim], dtype=torch.bool, device=device)
            heads[self.iv.heads] = True
            mask = mask & heads.view([-1 if d == self.site.head_dim else 1 for d in range(len(shape))])
        if self.iv.value == "shift_off":
            lags = torch.arange(shape[0], device=device) >= 1
            mask = mask & lags.view([-1] + [1] * (len(shape) - 1))
        return mask

    def target(self, x: torch.Tensor, tokens: Optional[torch.Tensor]) -> torch.Tensor:
        """What the selected entries of x become."""
        action, value = self.iv.action, self.iv.value
        if action == "stop_grad":
            return x.detach()
        if action == "mean":
            return x.mean(0, keepdim=True).detach()
        if action == "zero" or value == "shift_off":
            return x.new_zeros(())
        if value == "induction":
            if tokens is None:
                raise RuntimeError("the induction pattern needs the batch's tokens; none were captured")
            return induction_pattern(tokens).to(x)[:, None]  # [batch, 1, q, k]
        if isinstance(value, str):
            seq = x.shape[-1]
            if seq not in self._patterns:
                build = previous_token_pattern if value == "previous_token" else uniform_pattern
                self._patterns[seq] = build(seq).to(x)
            return self._patterns[seq]  # [q, k]
        return self.value.to(x.dtype)

    def edit(self, x: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The hooked value after the intervention (x itself for freeze)."""
        if self.iv.action == "freeze":
            return x
        if self.replaces_all:  # the value is replaced outright: nothing upstream is differentiated through it
            return self.target(x, tokens).expand(x.shape)
        return torch.where(self.mask, self.target(x, tokens), x)

    def frozen(self) -> list[tuple[nn.Parameter, Optional[torch.Tensor]]]:
        """(parameter, row index or None for all of it) that freeze holds."""
        out = []
        for b in self.site.behind:
            if self.iv.heads is None:
                out.append((b.param, None))
            elif b.rows is not None:
                heads = sorted({h // b.divisor for h in self.iv.heads})
                rows = torch.cat([torch.arange(h * b.rows, (h + 1) * b.rows) for h in heads])
                out.append((b.param, rows.to(b.param.device)))
        return out


def bind(model: Model, interventions: list[Intervention], steps: int, seq_len: int) -> list[Bound]:
    """Check every intervention against `model` (hook name, heads, value shape, window) -> its edits.

    Raises one-line `ConfigError`s; an unknown hook name gets the closest names that exist.
    """
    if not interventions:
        return []
    sites = hook_sites(model)
    for iv in interventions:
        iv.validate()
        iv.check_window(steps)
        if iv.hook not in sites:
            close = difflib.get_close_matches(iv.hook, list(sites), n=3, cutoff=0.0)
            raise ConfigError(f"{iv.where}: no hook {iv.hook!r} to intervene on in this model; closest: {', '.join(close)}")
    shapes = value_shapes(model, {iv.hook: sites[iv.hook] for iv in interventions}, seq_len)
    device = next(model.parameters()).device
    return [Bound(iv, sites[iv.hook], shapes[iv.hook], device) for iv in interventions]


@torch.no_grad()
def value_shapes(model: Model, sites: dict[str, Site], seq_len: int) -> dict[str, tuple[int, ...]]:
    """Shape of each site's value on a batch of one sequence of `seq_len` tokens (coefficients: their own shape)."""
    shapes: dict[str, tuple[int, ...]] = {}
    with contextlib.ExitStack() as stack:
        for name, site in sites.items():
            def record(x: torch.Tensor, name: str = name) -> torch.Tensor:
                shapes[name] = tuple(x.shape)
                return x
            stack.enter_context(_attached(site, record))
        device = next(model.parameters()).device
        model(torch.zeros(1, seq_len, dtype=torch.long, device=device))
        for name, site in sites.items():
            if site.kind == "coefficients":
                shapes[name] = tuple(site.module.lag_coefficients().shape)
    return shapes


@contextlib.contextmanager
def _attached(site: Site, edit: Edit) -> Iterator[None]:
    """`edit` applied to the site's value on the bare module while the context lasts."""
    module = site.module
    if site.kind == "coefficients":
        previous = module.__dict__.get("lag_coefficients")  # an earlier override, or None (the class method)
        inner = module.lag_coefficients
        module.lag_coefficients = lambda: edit(inner())  # the one method every mixer reads its coefficients through
        try:
            yield
        finally:
            if previous is None:
                del module.lag_coefficients
            else:
                module.lag_coefficients = previous
        return
    if site.kind == "pattern":
        def pre(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            inner = kwargs.get("pattern_fn")  # an earlier intervention on the same pattern fires first
            kwargs["pattern_fn"] = edit if inner is None else (lambda p: edit(inner(p)))
            return args, kwargs
        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    elif site.kind == "input":
        def pre_input(mod: nn.Module, args: tuple) -> tuple:
            return (_per_head(args[0], site.split, edit),) + args[1:]
        handle = module.register_forward_pre_hook(pre_input)
    else:
        def post(mod: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            return _per_head(output, site.split, edit)
        handle = module.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


def _per_head(x: torch.Tensor, split: Optional[tuple[int, int]], edit: Edit) -> torch.Tensor:
    """`edit` of x [batch, pos, heads·d_head] viewed as [batch, pos, head, d_head] (as the bridge's hook sees it)."""
    if split is None:
        return edit(x)
    return edit(x.unflatten(-1, split)).flatten(-2)


class InterventionSchedule:
    """A run's interventions on its bare module, switched on and off by step.

    Per optimizer step: `at(step)` before the forward (attaches the edits active at `step`), `after_backward()`
    (freeze: drops those parameters' gradients), `after_update()` (freeze: restores their values, so weight decay
    and Adam's momentum cannot move them either). Evaluations run under whatever `at` attached last.
    """

    def __init__(self, model: nn.Module, interventions: list[Intervention], steps: int, seq_len: int):
        self.model = model
        self.bound = bind(model, interventions, steps, seq_len)
        self.tokens: Optional[torch.Tensor] = None
        self._stack: Optional[contextlib.ExitStack] = None
        self._active: tuple[int, ...] = ()
        self._snapshots: dict[int, list[tuple[nn.Parameter, Optional[torch.Tensor], torch.Tensor]]] = {}

    def at(self, step: int) -> None:
        """Attach exactly the interventions active at `step` (no-op when the active set is unchanged)."""
        active = tuple(i for i, b in enumerate(self.bound) if b.iv.active(step))
        if active == self._active:
            return
        self.close()
        self._active = active
        self._stack = contextlib.ExitStack()
        if any(self.bound[i].iv.value == "induction" for i in active):
            self._stack.enter_context(self._capturing_tokens())
        for i in active:
            b = self.bound[i]
            if b.iv.action == "freeze":
                self._snapshots[i] = [(p, rows, (p if rows is None else p[rows]).detach().clone())
                                      for p, rows in b.frozen()]
            else:
                self._stack.enter_context(_attached(b.site, functools.partial(self._edit, b)))

    def _edit(self, b: Bound, x: torch.Tensor) -> torch.Tensor:
        return b.edit(x, self.tokens)

    @contextlib.contextmanager
    def _capturing_tokens(self) -> Iterator[None]:
        """Keep the tokens of each forward (the induction pattern is computed from them)."""
        def pre(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            self.tokens = args[0] if args else kwargs["input_ids"]
        handle = self.model.register_forward_pre_hook(pre, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            self.tokens = None

    def after_backward(self) -> None:
        """Drop the gradients of frozen parameters (before clipping, so they count in no norm)."""
        for params in self._snapshots.values():
            _drop_gradients([(p, rows) for p, rows, _ in params])

    @torch.no_grad()
    def after_update(self) -> None:
        """Put frozen parameters back to their values at the window's start (or the resume)."""
        for params in self._snapshots.values():
            for p, rows, saved in params:
                if rows is None:
                    p.copy_(saved)
                else:
                    p[rows] = saved

    def close(self) -> None:
        """Detach every edit and forget freeze snapshots."""
        if self._stack is not None:
            self._stack.close()
            self._stack = None
        self._active, self._snapshots = (), {}


@contextlib.contextmanager
def bridge_hooks(bridge: Model, interventions: list[Intervention], tokens: torch.Tensor,
                 steps: int) -> Iterator[list[tuple[str, Callable]]]:
    """`run_with_hooks` hooks applying `interventions` (those active at any step: windows are the trainer's business)
    to `bridge` on `tokens` [batch, pos], as `(hook name, fn)` pairs; coefficient edits are attached to the bridge's
    mixers while the context lasts. `freeze` has no forward effect; mask gradients with `freeze_gradients`.

    >>> with bridge_hooks(bridge, [Intervention("blocks.0.attn.hook_pattern", "clamp", "uniform")], tokens, 100) as hooks:
    ...     logits = bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    """
    bound = bind(bridge, interventions, steps, tokens.shape[1])
    hooks = []
    with contextlib.ExitStack() as stack:
        for b in bound:
            if b.iv.action == "freeze":
                continue
            if b.site.kind == "coefficients":
                stack.enter_context(_attached(b.site, functools.partial(b.edit, tokens=tokens)))
            else:
                hooks.append((b.iv.hook, lambda x, hook, b=b: b.edit(x, tokens)))
        yield hooks


def freeze_gradients(model: Model, interventions: list[Intervention], steps: int, seq_len: int) -> None:
    """Drop the gradients the `freeze` interventions among `interventions` hold, on any model (bare or bridge): what
    the trainer does after each backward inside their windows."""
    for b in bind(model, [iv for iv in interventions if iv.action == "freeze"], steps, seq_len):
        _drop_gradients(b.frozen())


def _drop_gradients(params: list[tuple[nn.Parameter, Optional[torch.Tensor]]]) -> None:
    """No gradient for whole parameters (the optimizer then skips them); zeros for rows of the others."""
    for p, rows in params:
        if p.grad is None:
            continue
        if rows is None:
            p.grad = None
        else:
            p.grad[rows] = 0.0
