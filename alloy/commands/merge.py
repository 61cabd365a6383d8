"""`alloy merge RECIPE OUT`: one merge, streamed from the parents' files to a new checkpoint."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML (a mergekit config, plus alloy's groups: block)")
    parser.add_argument("out", help="output folder for the merged Hugging Face checkpoint")
    parser.add_argument("--device", default="cpu", help="where tensors are merged: cpu, cuda or cuda:N")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    parser.add_argument("--models-dir", default=".",
                        help="folder that relative model paths in the recipe are resolved against (default: cwd)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def run(args: argparse.Namespace) -> int:
    from alloy.merge.executor import run_merge
    from alloy.merge.plan import plan_merge
    from alloy.merge.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    plan = plan_merge(recipe, args.models_dir)
    report = run_merge(plan, args.out, device=args.device, max_shard_size=args.max_shard_size,
                       overwrite=args.overwrite, progress=not args.quiet)
    if not args.quiet:
        print(f"merged {report.tensors} tensors ({report.input_bytes / 1e9:.2f} GB read, "
              f"{report.output_bytes / 1e9:.2f} GB written) in {report.seconds:.1f} s -> {report.out} "
              f"[recipe {recipe.hash}]")
    return 0
