"""``lora.rank_mode: gradient``: ranks reallocated after a warm-up, by what the adapters learned.

Why not PEFT's AdaLoRA: it refuses Conv1d, ConvTranspose and MultiheadAttention, which is most
of HT-Demucs. This works for every layer type rankhouse adapts, by one rule:

1. Every target starts at ``gradient_init_scale`` x ``rank`` (clamped to the layer's
   min(fan_in, fan_out)) and trains for ``gradient_at`` of the first epoch's steps.
2. Each adapter's update ``scaling * B @ A`` is split into rank-1 components by SVD. A
   component's importance is the share of the base weight's energy it adds
   (sigma^2 / ||W_base||_F^2): where the accumulated gradients moved the layer most, relative
   to its size. A MultiheadAttention's in- and out-projection share one rank, so their
   components' importances add.
3. The components are kept greedily by importance per parameter, every module keeping at
   least one, until the budget is spent: the trainable parameters of ``rank`` everywhere
   (``uniform``). So a ``gradient`` trial never holds more adapter parameters than a
   ``uniform`` one of the same ``rank``, and the budget counter counts it as that uniform trial.
4. Each adapter is rebuilt at its new rank from its truncated SVD (the best approximation of
   the update at that rank), rescaled for the new rank's alpha/r, so training continues from
   what the warm-up learned rather than from zero. The rebuilt factors' AdamW moments restart
   (the rebuilt heads' carry on); the learning-rate schedule does not. A step with nothing to
   prune (the adapters already within its budget) rebuilds nothing.
5. With ``gradient_steps`` n > 1 the pruning is progressive, in the manner of AdaLoRA's budget
   schedule: n reallocations spread evenly from the first (at ``gradient_at``) to the end of
   the first epoch, the k-th (of 1..n) keeping budget + (start - budget) (1 - k/n)^3
   parameters, where start is the warm-up's. AdaLoRA's cubic runs over time from the end of
   its warm-up; this one runs over the reallocations, so the first already removes most of the
   excess (58% of it at n = 4) and the later ones refine. Each prunes from the ranks the
   previous one left, so a component cut early cannot come back, and the later importances are
   measured on adapters that trained longer at their reduced ranks.

Reallocation happens inside the first epoch, so every reported epoch and every saved adapter
already has its final ranks. (AdaLoRA prunes over most of training; here the first epoch holds
the whole schedule: a trial describes itself, and logs its rank map, once.)
"""

from __future__ import annotations

import math

import torch
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from trainables.lora_layers import LoraConvTranspose

ADAPTER = "default"
PREFIX = "base_model.model."


def lora_layers(model: nn.Module) -> dict[str, list[LoraLayer]]:
    """Rank-map module path -> its LoRA layers (a MultiheadAttention: itself, for the in-projection,
    and its out_proj, which PEFT wraps as a Linear with the same rank)."""
    out: dict[str, list[LoraLayer]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or ADAPTER not in module.lora_A:
            continue
        name = name.removeprefix(PREFIX)
        owner = name.removesuffix(".base_layer.out_proj")
        out.setdefault(owner, []).append(module)
    return out


def _base_weight(layer: LoraLayer) -> torch.Tensor:
    base = layer.get_base_layer()
    return base.in_proj_weight if isinstance(base, nn.MultiheadAttention) else base.weight


def matrices(layer: LoraLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (r, n_in), B (n_out, r)) with the layer's update equal to scaling * B @ A, for
    Linear, Conv{1,2}d (A: a conv into r channels, B: pointwise) and ConvTranspose."""
    a, b, r = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight, layer.r[ADAPTER]
    if isinstance(layer, LoraConvTranspose):  # A: (in, r, *k), B: (r, out, 1...)
        return a.transpose(0, 1).reshape(r, -1), b.reshape(r, -1).T
    return a.reshape(r, -1), b.reshape(b.shape[0], r)


def _store(layer: LoraLayer, a_mat: torch.Tensor, b_mat: torch.Tensor) -> None:
    """Write (A, B) matrices into the layer's (freshly rebuilt) lora_A / lora_B weights."""
    a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
    with torch.no_grad():
        if isinstance(layer, LoraConvTranspose):
            a.copy_(a_mat.reshape(a_mat.shape[0], a.shape[0], *a.shape[2:]).transpose(0, 1))
            b.copy_(b_mat.T.reshape(b.shape))
        else:
            a.copy_(a_mat.reshape(a.shape))
            b.copy_(b_mat.reshape(b.shape))


def _svd(layer: LoraLayer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vh of scaling * B @ A, computed through the rank-r factors (QR first: the update is
    never formed at full size)."""
    a, b = (m.detach().float() for m in matrices(layer))
    qb, rb = torch.linalg.qr(b)  # (n_out, r), (r, r)
    qa, ra = torch.linalg.qr(a.T)  # (n_in, r), (r, r)
    u, s, vh = torch.linalg.svd(rb @ ra.T * layer.scaling[ADAPTER])
    return qb @ u, s, vh @ qa.T


def _cost_per_rank(layers: list[LoraLayer]) -> int:
    return sum((m.numel() for layer in layers for m in (layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight)))\
        // layers[0].r[ADAPTER]


def importances(model: nn.Module) -> dict[str, tuple[list[float], int]]:
    """Module -> (importance of each rank-1 component, largest first; parameters per rank)."""
    out = {}
    for name, layers in lora_layers(model).items():
        total = None
        for layer in layers:
            s = _svd(layer)[1]
            share = s ** 2 / _base_weight(layer).detach().float().pow(2).sum().clamp_min(1e-12)
            total = share if total is None else total + share
        out[name] = (sorted(total.tolist(), reverse=True), _cost_per_rank(layers))
    return out


def allocate(scores: dict[str, tuple[list[float], int]], budget: int) -> dict[str, int]:
    """Ranks that keep the most important components per parameter within ``budget`` parameters,
    every module at least 1 and at most what it trained with. Each module's components come
    largest first at one cost, so the greedy choice always keeps a prefix of each module's."""
    ranks = {name: 1 for name in scores}
    left = budget - sum(cost for _, cost in scores.values())
    candidates = sorted(((imp / cost, name, k) for name, (imps, cost) in scores.items()
                         for k, imp in enumerate(imps) if k > 0), key=lambda c: (-c[0], c[1], c[2]))
    for _, name, k in candidates:
        cost = scores[name][1]
        if k == ranks[name] and cost <= left:  # the next component of this module, if it fits
            ranks[name] += 1
            left -= cost
    return ranks


def reshape(model: nn.Module, ranks: dict[str, int], keep_learned: bool = True) -> None:
    """Rebuild every adapter of ``model`` (a PeftModel) in place at ``ranks``; with
    ``keep_learned`` each starts from the truncated SVD of what it had learned. The adapter's
    config is updated, so saving and reloading see the new ranks."""
    from trainables.lora import lora_config

    peft_config = model.peft_config[ADAPTER]
    for name, layers in lora_layers(model).items():
        r = ranks[name]
        parts = [(layer, *_svd(layer)) for layer in layers] if keep_learned else []
        head = layers[0]
        # one call per rank-map module: PEFT's MultiheadAttention rebuilds its out_proj's too
        head.update_layer(ADAPTER, r, lora_alpha=head.lora_alpha[ADAPTER], config=peft_config)
        for layer, u, s, vh in parts:
            # scaling' * B' @ A' = the rank-r truncation of the old update
            root = (s[:r] / layer.scaling[ADAPTER]).sqrt()
            device, dtype = layer.lora_A[ADAPTER].weight.device, layer.lora_A[ADAPTER].weight.dtype
            _store(layer, (root[:, None] * vh[:r]).to(device, dtype), (u[:, :r] * root).to(device, dtype))
    fresh = lora_config(ranks, _spec_of(peft_config), list(peft_config.modules_to_save or []))
    peft_config.r, peft_config.rank_pattern = fresh.r, fresh.rank_pattern


def _spec_of(peft_config):
    from trainables.lora import LoraSpec

    return LoraSpec(alpha=peft_config.lora_alpha, dropout=peft_config.lora_dropout,
                    scaling="rslora" if peft_config.use_rslora else "standard")


def uniform_budget(model: nn.Module, rank: int) -> int:
    """Adapter parameters of ``rank`` on every module (clamped to what each layer can take):
    the budget a ``gradient`` trial reallocates within."""
    from trainables.lora import fan

    total = 0
    for name, layers in lora_layers(model).items():
        base = layers[0].get_base_layer()
        total += _cost_per_rank(layers) * min(rank, min(fan(base)))
    return total


def adapter_size(model: nn.Module) -> int:
    """The adapter parameters ``model`` holds at its current ranks."""
    return sum(_cost_per_rank(layers) * layers[0].r[ADAPTER] for layers in lora_layers(model).values())


def warmup_steps(gradient_at: float, steps_per_epoch: int) -> int:
    """The step after which ranks are first reallocated: a fraction of the first epoch, at least one step."""
    return max(1, min(steps_per_epoch, math.floor(gradient_at * steps_per_epoch + 0.5)))


def schedule(gradient_at: float, steps_per_epoch: int, reallocations: int, start: int, budget: int) -> dict[int, int]:
    """{step: budget} of each reallocation: the first at ``gradient_at`` of the first epoch, the
    last at its end at ``budget``, evenly spaced, the budgets falling from ``start`` (the
    warm-up's parameters) on a cubic. An epoch too short for them all merges steps that land
    together, keeping the later (smaller) budget."""
    first = warmup_steps(gradient_at, steps_per_epoch)
    if reallocations == 1:
        return {first: budget}
    plan: dict[int, int] = {}
    for k in range(1, reallocations + 1):
        step = first + math.floor((steps_per_epoch - first) * (k - 1) / (reallocations - 1) + 0.5)
        plan[step] = budget + math.floor(max(start - budget, 0) * (1 - k / reallocations) ** 3)
    return plan
