"""Tensor groups: every tensor name of a checkpoint maps to exactly one group.

Groups are what recipes and search spaces address (`groups: {routed_experts: ...}`). Presets exist
for the architectures alloy knows (by `config.model_type`); any other architecture uses the generic
preset, which holds every rule. Names are matched in their on-disk form (per-expert tensors), and
FP8 scale tensors (`*.weight_scale_inv`) belong to the group of their weight.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

GROUPS: tuple[str, ...] = ("embed", "lm_head", "norm", "attention", "mlp", "router", "shared_experts",
                           "routed_experts", "other")

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")

# (group, pattern) rules, tried in order; the first match wins.
_NORM = ("norm", r"(?:^|\.)[^.]*norm[^.]*\.(?:weight|bias)$")
_EMBED = ("embed", r"(?:^|\.)embed_tokens\.weight$")
_LM_HEAD = ("lm_head", r"(?:^lm_head\.weight$|\.shared_head\.head\.weight$)")
_ATTENTION = ("attention", r"\.self_attn\.")
_MLP = ("mlp", r"\.mlp\.(?:gate_proj|up_proj|down_proj)\.")
_ROUTER = ("router", r"\.(?:mlp|block_sparse_moe)\.gate\.(?:weight|e_score_correction_bias)$")
_SHARED = ("shared_experts", r"\.mlp\.(?:shared_experts?|shared_expert_gate)\.")
_ROUTED = ("routed_experts", r"\.(?:mlp|block_sparse_moe)\.experts\.")

_DENSE_RULES = tuple((g, re.compile(p)) for g, p in (_EMBED, _LM_HEAD, _NORM, _ATTENTION, _MLP))
_MOE_RULES = tuple((g, re.compile(p)) for g, p in
                   (_EMBED, _LM_HEAD, _NORM, _ATTENTION, _ROUTER, _ROUTED, _SHARED, _MLP))


@dataclass(frozen=True)
class GroupPreset:
    """The grouping rules of one architecture family: (group, compiled pattern), first match wins."""

    name: str
    rules: tuple[tuple[str, re.Pattern[str]], ...]

    def group_of(self, tensor_name: str) -> str:
        """The group of an on-disk tensor name (`other` when no rule matches)."""
        name = tensor_name.removesuffix("_scale_inv")
        for group, pattern in self.rules:
            if pattern.search(name):
                return group
        return "other"

PRESETS: dict[str, GroupPreset] = {
    "dense": GroupPreset("dense", _DENSE_RULES),          # llama, mistral, qwen2, qwen3
    "mixtral": GroupPreset("mixtral", _MOE_RULES),
    "qwen3_moe": GroupPreset("qwen3_moe", _MOE_RULES),
    "deepseek_v3": GroupPreset("deepseek_v3", _MOE_RULES),  # first_k_dense_replace layers are dense mlp
    "generic": GroupPreset("generic", _MOE_RULES),
}

_MODEL_TYPES = {"llama": "dense", "mistral": "dense", "qwen2": "dense", "qwen3": "dense",
                "mixtral": "mixtral", "qwen3_moe": "qwen3_moe", "qwen2_moe": "qwen3_moe",
                "deepseek_v3": "deepseek_v3", "deepseek_v2": "deepseek_v3"}


def preset_for(config: Mapping) -> GroupPreset:
    """The preset of a checkpoint's `config.json` contents (generic for unknown model types)."""
    return PRESETS[_MODEL_TYPES.get(str(config.get("model_type", "")), "generic")]


def layer_index(tensor_name: str) -> int | None:
    """The decoder layer a tensor belongs to (`model.layers.7.…` → 7), or None."""
    m = _LAYER.search(tensor_name)
    return int(m.group(1)) if m else None


def group_tensors(names: Iterable[str], config: Mapping) -> dict[str, str]:
    """Map every tensor name to its group using the checkpoint's preset."""
    preset = preset_for(config)
    return {n: preset.group_of(n) for n in names}
