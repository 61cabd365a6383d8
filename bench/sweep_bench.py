"""Candidates per minute of a sweep worker on each backend, measured side by side in one run.

    python bench/sweep_bench.py [--workdir DIR] [--hidden 64] [--layers 2] [--candidates 3]
                                [--prompts 30] [--tokens 128]

Tiny Llama parents (shaped for vLLM's CPU kernels) go into the Ray object store; each candidate is
a new linear merge, scored by alloy's evaluator on the first `--prompts` AIME 2024 questions with
`--tokens` output tokens each (greedy). Four ways to score a candidate:
(a) vLLM swap: one live engine; the child is merged from the store into it in place;
(b) vLLM fresh: `alloy merge` writes the child, and a new engine is started on it;
(c) HF in memory, batched (the hf backend's sweep default, 16 requests at once);
(d) HF in memory, batch size 1 (what sweeps used before).
Prints candidates per minute, generated tokens per second, the ratios (a)/(b), (a)/(c) and (c)/(d),
and the share of a candidate's time that (a) spends merging and swapping.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alloy.merge.executor import run_merge  # noqa: E402
from alloy.merge.plan import plan_merge  # noqa: E402
from alloy.merge.recipe import Recipe  # noqa: E402
from alloy.workers.local_ray import ray_session  # noqa: E402
from alloy.workers.store import start_stores  # noqa: E402

DATA = REPO.parent / "shared" / "data"
SWEEP = "sweep-bench"


def make_parents(root: Path, hidden: int, layers: int) -> list[Path]:
    from alloy.tiny import make_tiny_model, perturbed_copy, save_tiny_checkpoint, train_tokenizer

    paths = [root / f"parent{i}" for i in range(3)]
    if all((p / "config.json").is_file() for p in paths):
        return paths
    tok = train_tokenizer()
    base = make_tiny_model("llama", seed=0, hidden_size=hidden, num_layers=layers, vllm=True)
    for i, p in enumerate(paths):
        save_tiny_checkpoint(base if i == 0 else perturbed_copy(base, scale=0.3, seed=i), p, tok)
    return paths


def candidate(parents: list[Path], i: int) -> dict:
    """The i-th candidate: a linear merge whose coefficients move with i (no two are identical)."""
    w = 0.1 + 0.8 * ((i * 3) % 7) / 7
    return {"merge_method": "linear",
            "models": [{"model": str(parents[0]), "parameters": {"weight": 1 - w}},
                       {"model": str(parents[1]), "parameters": {"weight": w / 2}},
                       {"model": str(parents[2]), "parameters": {"weight": w / 2}}]}


class Tally:
    """Seconds, swap/merge seconds and generated tokens over the candidates of one way."""

    def __init__(self, name: str):
        self.name, self.seconds, self.load_s, self.tokens, self.count = name, 0.0, 0.0, 0, 0

    def add(self, seconds: float, load_s: float, result) -> None:
        self.seconds += seconds
        self.load_s += load_s
        self.tokens += result.output_tokens.total
        self.count += 1

    @property
    def per_minute(self) -> float:
        return 60 * self.count / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def evaluator(model, tokenizer, args, batch_size: int = 1):
    from alloy.evaluation.harness import RungEvaluator

    return RungEvaluator(model, tokenizer, ["aime24"], max_gen_toks=args.tokens, data_dir=DATA,
                         batch_size=batch_size)


def run_swap(parents, args) -> Tally:
    from alloy.evaluation.vllm_lm import ThinkingVLLM
    from alloy.workers.engine import VllmEngine

    engine = VllmEngine(SWEEP)
    scorer = evaluator(ThinkingVLLM(engine.llm, max_gen_toks=args.tokens), None, args)
    engine.swap(candidate(parents, 99))
    scorer.score("warm-up", 1)
    tally = Tally("(a) vLLM swap")
    for i in range(args.candidates):
        start = time.perf_counter()
        load_s = engine.swap(candidate(parents, i))
        result = scorer.score(i, args.prompts)
        tally.add(time.perf_counter() - start, load_s, result)
    del scorer, engine
    gc.collect()
    return tally


def run_fresh(parents, args, work: Path) -> Tally:
    from alloy.evaluation.vllm_lm import ThinkingVLLM, local_engine

    tally = Tally("(b) vLLM fresh engine")
    for i in range(args.candidates):
        start = time.perf_counter()
        out = work / f"fresh-child{i}"
        run_merge(plan_merge(Recipe.from_dict(candidate(parents, i))), out, progress=False, overwrite=True)
        llm = local_engine(str(out), dtype="float32", enforce_eager=True)
        load_s = time.perf_counter() - start
        result = evaluator(ThinkingVLLM(llm, max_gen_toks=args.tokens), None, args).score(i, args.prompts)
        tally.add(time.perf_counter() - start, load_s, result)
        del llm
        gc.collect()
    return tally


def run_hf(parents, args, batch_size: int) -> Tally:
    from transformers import AutoTokenizer

    from alloy.workers.builder import ChildBuilder

    builder = ChildBuilder(SWEEP, dtype="float32")
    scorer = evaluator(builder.model, AutoTokenizer.from_pretrained(parents[0]), args, batch_size)
    tally = Tally(f"({'c' if batch_size > 1 else 'd'}) HF in memory, batch {batch_size}")
    for i in range(args.candidates):
        start = time.perf_counter()
        load_s = builder.build(candidate(parents, i)).seconds
        result = scorer.score(i, args.prompts)
        tally.add(time.perf_counter() - start, load_s, result)
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=30, help="AIME 2024 questions per candidate")
    parser.add_argument("--tokens", type=int, default=128, help="output tokens per question")
    parser.add_argument("--batch-size", type=int, default=16, help="the batched HF way's batch size")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="alloy-sweep-bench-"))
    parents = make_parents(work, args.hidden, args.layers)
    with ray_session("local", num_cpus=2):
        stores = start_stores(SWEEP, {str(p): str(p) for p in parents}, base=str(parents[0]), detached=False)
        a = run_swap(parents, args)
        b = run_fresh(parents, args, work)
        c = run_hf(parents, args, args.batch_size)
        d = run_hf(parents, args, 1)
        del stores
    print(f"{args.candidates} candidates of a {args.layers}-layer Llama (hidden {args.hidden}), "
          f"{args.prompts} AIME questions x {args.tokens} tokens each")
    for t in (a, b, c, d):
        print(f"{t.name:<28} {t.per_minute:8.2f} candidates/min  {t.tokens_per_s:8.0f} tokens/s  "
              f"load {t.load_s / t.count:.3f} s/candidate")
    print(f"(a)/(b) vLLM swap vs fresh engine: {a.per_minute / b.per_minute:.1f}x")
    print(f"(a)/(c) vLLM swap vs HF batched:   {a.per_minute / c.per_minute:.2f}x")
    print(f"(c)/(d) HF batched vs batch 1:     {c.per_minute / d.per_minute:.1f}x")
    print(f"merge + swap share of a vLLM-swap candidate: {100 * a.load_s / a.seconds:.2f}%")


if __name__ == "__main__":
    main()
