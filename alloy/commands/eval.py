"""`alloy eval MODEL_DIR --tasks ...`: score a checkpoint on alloy's tasks, print a table, write JSON."""
from __future__ import annotations

import argparse

from alloy.logs import LOG_FILE, add_verbose_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR", help="a Hugging Face model folder")
    parser.add_argument("--tasks", required=True,
                        help="comma-separated tasks, e.g. aime24,gpqa_diamond,livecodebench")
    parser.add_argument("--limit", type=int, help="score the first N documents of each task (default: all)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="samples per question, seeded (sampling is switched on when K > 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every request's sampling")
    parser.add_argument("--max-gen-toks", type=int, default=32768, help="output tokens per answer (default 32768)")
    parser.add_argument("--max-thinking-tokens", type=int,
                        help="budget forcing: end thinking after N tokens and make the model answer")
    parser.add_argument("--min-thinking-tokens", type=int,
                        help="budget forcing: replace an end of thinking before N tokens by 'Wait'")
    parser.add_argument("--wait-extensions", type=int, default=0,
                        help="budget forcing: insert 'Wait' at most N times per answer")
    parser.add_argument("--temperature", type=float, help="sampling temperature for every task (0: greedy)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling for every task")
    parser.add_argument("--batch-size", type=int, default=1, help="requests generated together (hf backend)")
    parser.add_argument("--data-dir", help="read each task's documents from DIR/<task>.jsonl instead of the Hub "
                                           "(default: $ALLOY_DATA_DIR when set)")
    parser.add_argument("--evaluators", help="the lm-eval task folder (default: $ALLOY_EVALUATORS, else "
                                             "the evaluators/ shipped with alloy)")
    parser.add_argument("--backend", choices=("hf", "vllm", "auto"), default="hf",
                        help="hf: transformers in this process; vllm: a vLLM engine in this process (GPU, or the "
                             "CPU build); auto: vllm where a GPU and vllm are present, else hf")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of the hf backend")
    parser.add_argument("--output", help="write the results as JSON to this file")
    parser.add_argument("--log-samples", action="store_true",
                        help="keep every sample (prompt, response, answer, correctness, tokens) in the JSON")
    parser.add_argument("--allow-code-execution", action="store_true",
                        help="let code tasks (livecodebench) run model-written code in alloy's sandbox")
    add_verbose_argument(parser)  # the log goes beside --output, else into the current folder


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from alloy.io.atomic import atomic_write_text, check_writable
    from alloy.errors import AlloyError
    from alloy.evaluation.harness import TaskSuite, evaluate
    from alloy.evaluation.lm import BudgetForcing
    from alloy.logs import quiet_output

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise AlloyError(f"{model_dir} is not a Hugging Face model folder (no config.json); pass the "
                         "folder holding config.json, the weights and the tokenizer")
    for name in ("limit", "repeats", "max_gen_toks", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise AlloyError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    budget = BudgetForcing(max_thinking_tokens=args.max_thinking_tokens,
                           min_thinking_tokens=args.min_thinking_tokens, wait_extensions=args.wait_extensions)
    budget.check_generation_budget(args.max_gen_toks)
    if args.backend != "hf":
        import torch

        from alloy.workers.pool import resolve_backend

        args.backend = resolve_backend(args.backend, 1 if torch.cuda.is_available() else 0)
    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise AlloyError(f"the folder of --output {args.output} does not exist; create it first")
    if args.output:
        check_writable(args.output)
    options = dict(limit=args.limit, max_gen_toks=args.max_gen_toks, repeats=args.repeats, seed=args.seed,
                   temperature=args.temperature, top_p=args.top_p, log_samples=args.log_samples)
    if args.backend == "hf":
        options.update(batch_size=args.batch_size, max_thinking_tokens=args.max_thinking_tokens,
                       min_thinking_tokens=args.min_thinking_tokens, wait_extensions=args.wait_extensions)
    log_folder = Path(args.output).resolve().parent if args.output else Path.cwd()
    with quiet_output(log_folder / LOG_FILE, args.verbose):
        suite = TaskSuite.load(args.tasks, evaluators=args.evaluators, data_dir=args.data_dir,
                               allow_code_execution=args.allow_code_execution)
        model, tokenizer = _load_model(model_dir, args, budget)
        result = evaluate(model, tokenizer, suite, **options)
    print(render_table(result))
    if args.output:
        payload = dict(result.to_dict(), model=str(model_dir.resolve()), backend=args.backend)
        atomic_write_text(args.output, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.output}")
    return 0


def _load_model(model_dir, args: argparse.Namespace, budget):
    """The model to evaluate: (transformers model, tokenizer) for hf, (ThinkingVLLM, None) for vllm."""
    from alloy.errors import AlloyError

    if args.backend == "vllm":
        import torch

        from alloy.evaluation.vllm_lm import ThinkingVLLM, cpu_dtype, local_engine
        from alloy.io.checkpoint import Checkpoint

        on_gpu = torch.cuda.is_available()
        dtype = "auto" if on_gpu else cpu_dtype(Checkpoint.open(model_dir).config)
        llm = local_engine(str(model_dir), seed=args.seed, dtype=dtype, enforce_eager=not on_gpu)
        return ThinkingVLLM(llm, max_gen_toks=args.max_gen_toks, seed=args.seed, budget=budget), None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.device == "cuda" and not torch.cuda.is_available():
        raise AlloyError("--device cuda but no CUDA device is visible; use --device cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to(args.device).eval()
    return model, tokenizer


def render_table(result) -> str:
    """One row per task: its scores, documents x repeats, output and thinking token statistics."""
    header = ("task", "scores", "n", "out mean", "out median", "out p90", "think mean")
    rows = [header]
    for name, task in result.tasks.items():
        scores = ", ".join(f"{metric}={value:.4f}" for metric, value in task.scores.items()) or "-"
        rows.append((name, scores, f"{task.n_samples}x{task.repeats}", f"{task.output_tokens.mean:.1f}",
                     f"{task.output_tokens.median:.1f}", f"{task.output_tokens.p90:.1f}",
                     f"{task.thinking_tokens.mean:.1f}"))
    rows.append(("all", "", "", f"{result.output_tokens.mean:.1f}", f"{result.output_tokens.median:.1f}",
                 f"{result.output_tokens.p90:.1f}", f"{result.thinking_tokens.mean:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
