"""Tiny parent checkpoints of real architectures on disk, and FP8 versions of them, for tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml


def write_parents(root: Path, arch: str, tokenizer, n: int = 3, dtype: torch.dtype = torch.float32,
                  max_shard_size: str = "5GB", scale: float = 0.05, **config) -> list[Path]:
    """A tiny base model of `arch` and n-1 perturbed fine-tunes of it, saved as HF folders under root.

    The first folder is the base; each fine-tune moves every parameter by seeded relative noise.
    """
    from alloy.tiny import make_tiny_model, perturbed_copy, save_tiny_checkpoint

    base = make_tiny_model(arch, seed=0, vocab_size=len(tokenizer), **config).to(dtype)
    paths = []
    for i in range(n):
        model = base if i == 0 else perturbed_copy(base, scale=scale, seed=i)
        paths.append(save_tiny_checkpoint(model, root / f"{arch}_p{i}", tokenizer, max_shard_size=max_shard_size))
    return paths


def to_fp8_checkpoint(src: Path, dst: Path, block: tuple[int, int] = (128, 128)) -> Path:
    """Rewrite a checkpoint in DeepSeek's FP8 layout: linear weights of attention, mlp and experts as
    float8_e4m3fn with a `weight_scale_inv` per block, everything else as it was."""
    import shutil

    from safetensors.torch import load_file, save_file

    from alloy.io.fp8 import quantize
    from alloy.merge.groups import preset_for

    dst.mkdir(parents=True)
    config = json.loads((src / "config.json").read_text())
    preset = preset_for(config)
    tensors = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(f))
    out = {}
    for name, t in tensors.items():
        if (preset.group_of(name) in ("attention", "mlp", "shared_experts", "routed_experts")
                and name.endswith(".weight") and t.dim() == 2):
            q, s = quantize(t.float(), block)
            out[name], out[name + "_scale_inv"] = q, s
        else:
            out[name] = t.to(torch.bfloat16)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": list(block)}
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for f in src.iterdir():
        if f.name not in ("config.json", "model.safetensors", "model.safetensors.index.json") and f.suffix != ".safetensors":
            shutil.copy2(f, dst / f.name)
    return dst


def read_all(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder (test-sized models only)."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def merged_child(root: Path, recipe: dict, tag: str) -> Path:
    """The child of `recipe` as `alloy merge` writes it, in root/tag (its recipe in root/tag.yaml)."""
    from alloy.cli import main

    path = root / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["merge", str(path), str(root / tag), "--quiet"]) == 0
    return root / tag


def disk_child(tmp_path: Path, recipe: dict, tag: str) -> dict[str, torch.Tensor]:
    """The child `alloy merge` writes for `recipe` under `tmp_path/tag`, read back as tensors."""
    return read_all(merged_child(tmp_path, recipe, tag))
