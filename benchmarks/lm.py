"""Issue 14's language-model anchor: our vanilla LM against the plain-SDPA reference with the same MLPs on
Shakespeare character windows, and the window sampler against what one step consumes (bench.json: `lm` and its
two headline ratios)."""

from __future__ import annotations

import statistics

import torch

from benchmarks.harness import Context, Shape, interleaved, make_step, ms_per_call, ratio, samples_per_round
from benchmarks.reference import RefModel

TARGETS = {
    "lm_tokens_per_s_vs_sdpa": (">=", 0.95),  # the LM anchor shape (docs/lm.md)
    "lm_datagen_vs_consumption": (">=", 10.0),  # the window sampler outpaces training
}
LM_SHAPE = Shape(4, 128, 64, 12)  # nanoGPT's CPU "baby GPT" on shakespeare-char (GELU MLPs; vocab from the corpus)
QUICK_LM_SHAPE = Shape(1, 16, 16, 4, n_heads=2)


def bench_lm(shape: Shape, device: torch.device, rounds: int, warmup: int = 3) -> dict:
    """Our vanilla LM (LayerNorm, GELU MLP, learned positions) vs the plain-SDPA reference with the same MLPs,
    one training step each on Shakespeare character windows; and the window sampler
    (`kvshift_lens.data.tasks.text.random_windows`) against what one vanilla step consumes."""
    from kvshift_lens.data.tasks.text import random_windows
    from kvshift_lens.data.text_tokenizers import tokenized_corpus
    from kvshift_lens.models.config import ModelConfig
    from kvshift_lens.models.transformer import build_module

    data = tokenized_corpus("shakespeare", "char")
    stream, vocab, d_mlp = torch.from_numpy(data.train), data.vocab_size, 4 * shape.d_model
    gen = torch.Generator().manual_seed(0)
    tokens = random_windows(stream, shape.batch, shape.seq, gen).to(device)
    torch.manual_seed(0)
    ref = RefModel(vocab, shape.d_model, shape.n_heads, shape.n_layers, shape.seq, d_mlp=d_mlp).to(device)
    cfg = ModelConfig(mixer="none", n_layers=shape.n_layers, d_model=shape.d_model, n_heads=shape.n_heads,
                      d_vocab=vocab, n_ctx=shape.seq, attn_only=False, mlp="gelu", d_mlp=d_mlp)
    variants = {"sdpa_ref": make_step(ref.train(), tokens),
                "vanilla": make_step(build_module(cfg).to(device).train(), tokens),
                "datagen": lambda: random_windows(stream, shape.batch, shape.seq, gen)}
    inner = samples_per_round(variants["vanilla"], device)
    times = interleaved(variants, rounds, inner, device, warmup=warmup)
    tokens_per_step = shape.batch * shape.seq
    return {
        "shape": f"{shape.label} GELU MLP, vocab {vocab} (shakespeare char)", "rounds": rounds, "steps_per_sample": inner,
        "n_params": {"sdpa_ref": sum(p.numel() for p in ref.parameters()),
                     "vanilla": sum(p.numel() for p in build_module(cfg).parameters())},
        "ms_per_step": ms_per_call(times),
        "tokens_per_s": {n: round(tokens_per_step / statistics.median(times[n]), 1) for n in ("sdpa_ref", "vanilla")},
        "lm_tokens_per_s_vs_sdpa": round(ratio(times, "sdpa_ref", "vanilla"), 3),
        "lm_datagen_vs_consumption": round(ratio(times, "vanilla", "datagen"), 2),
    }


def measure(ctx: Context) -> dict:
    lm = bench_lm(QUICK_LM_SHAPE if ctx.quick else LM_SHAPE, ctx.device, ctx.rounds, warmup=ctx.warmup)
    print(f"[bench] LM {lm['shape']}: {lm['ms_per_step']} tokens/s vanilla/ref={lm['lm_tokens_per_s_vs_sdpa']} "
          f"datagen/consumed={lm['lm_datagen_vs_consumption']}", flush=True)
    return {"lm_tokens_per_s_vs_sdpa": lm["lm_tokens_per_s_vs_sdpa"],
            "lm_datagen_vs_consumption": lm["lm_datagen_vs_consumption"], "lm": lm}


def markdown(res: dict) -> list[str]:
    lm = res["lm"]
    return [f"## Language model: {lm['shape']}", "",
            f"ms per step: SDPA ref {lm['ms_per_step']['sdpa_ref']}, vanilla {lm['ms_per_step']['vanilla']} "
            f"(tokens/s {lm['tokens_per_s']['sdpa_ref']} vs {lm['tokens_per_s']['vanilla']}; parameters "
            f"{lm['n_params']['sdpa_ref']:,} vs {lm['n_params']['vanilla']:,}); window sampler "
            f"{lm['ms_per_step']['datagen']} ms per batch."]
