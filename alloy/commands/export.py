"""`alloy export SWEEP TRIAL OUT`: a sweep's candidate as a Hugging Face checkpoint, scores in its card."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="the output folder of `alloy sweep` (or its leaderboard.parquet)")
    parser.add_argument("trial", type=int, help="the trial number, as `alloy board` lists it")
    parser.add_argument("out", help="output folder for the child checkpoint")
    parser.add_argument("--device", default="cpu", help="where tensors are merged: cpu, cuda or cuda:N")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def run(args: argparse.Namespace) -> int:
    import json

    from alloy.errors import AlloyError
    from alloy.merge.executor import run_merge
    from alloy.merge.plan import plan_merge
    from alloy.merge.recipe import Recipe
    from alloy.search.leaderboard import leaderboard_meta, read_leaderboard

    table = read_leaderboard(args.sweep)
    rows = [r for r in table.to_pylist() if r.get("trial") == args.trial and r.get("recipe")]
    if not rows:
        raise AlloyError(f"{args.sweep}: no trial {args.trial} with a recipe on the leaderboard; "
                         f"`alloy board {args.sweep}` lists the trials")
    row = max(rows, key=lambda r: r.get("n_samples") or 0)
    objectives = [o["metric"] for o in leaderboard_meta(table)["objectives"]]
    scores = {m: row.get(m) for m in objectives}
    scores.update({"samples per task": row.get("n_samples"), "status": row.get("status"), "sweep trial": args.trial})
    recipe = Recipe.from_dict(json.loads(row["recipe"]), source=f"{args.sweep} trial {args.trial}")
    report = run_merge(plan_merge(recipe), args.out, device=args.device, max_shard_size=args.max_shard_size,
                       overwrite=args.overwrite, progress=not args.quiet, scores=scores)
    if not args.quiet:
        print(f"exported trial {args.trial} (recipe {recipe.hash}) to {report.out}")
    return 0
