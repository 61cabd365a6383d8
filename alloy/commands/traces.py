"""`alloy traces`: sample a teacher over problems and keep the traces each task's scorer verifies."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `alloy traces`."""
    parser.add_argument("--teacher", required=True, metavar="DIR",
                        help="Hugging Face model folder of the teacher (its tokenizer needs a chat template)")
    parser.add_argument("--problems", action="append", required=True, metavar="DOMAIN=FILE",
                        help="a domain's problems, JSONL in an evaluator's format (AIME/MATH, GPQA, LiveCodeBench) "
                             "or {\"prompt\", \"answer\"} (repeat per domain)")
    parser.add_argument("--format", action="append", default=[], metavar="DOMAIN=FORMAT",
                        help="a domain's format: aime, math, gpqa, livecodebench or generic (default: detected)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="DIR/DOMAIN.jsonl (kept traces), DIR/DOMAIN.samples.jsonl (every sample); rerun to resume")
    parser.add_argument("-k", "--k", type=int, default=4, help="samples per problem (default 4)")
    parser.add_argument("--no-verify", action="store_true",
                        help="keep every sample unverified (for problems without answers)")
    parser.add_argument("--allow-code-execution", action="store_true",
                        help="run LiveCodeBench answers in alloy's sandbox to verify them")
    parser.add_argument("--allow-empty-domains", action="store_true",
                        help="a domain without any correct trace is not an error (a reference student's run)")
    parser.add_argument("--backend", choices=("auto", "hf", "vllm"), default="auto",
                        help="auto: vllm where it is installed and a GPU is present, else hf (default auto)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs of the vLLM engine (default 1)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                        help="vLLM's share of GPU memory (host memory with the CPU build of vLLM) (default 0.9)")
    parser.add_argument("--temperature", type=float, default=0.6, help="sampling temperature; 0 is greedy (default 0.6)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95)")
    parser.add_argument("--max-new-tokens", type=int, default=32768, help="token budget per sample (default 32768)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per HF generation batch (default 8)")
    parser.add_argument("--chunk", type=int, default=8, help="problems per generation call and progress line (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--logits-k", type=int, default=0, metavar="K",
                        help="also write the teacher's top-K logits per response token (DOMAIN.teacher.safetensors, "
                             "for alloy branch --teacher-logits); needs --backbone with the teacher's tokenizer")
    parser.add_argument("--backbone", default=None, metavar="DIR", help="the backbone the logits are written for")


def run(args: argparse.Namespace) -> int:
    """Run `alloy traces`."""
    from alloy.branch.sampling import SamplingSettings
    from alloy.branch.traces import TraceSettings, traces
    from alloy.commands.branch import parse_pairs

    sampling = SamplingSettings(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                                seed=args.seed, batch_size=args.batch_size)
    settings = TraceSettings(k=args.k, verify=not args.no_verify, allow_code_execution=args.allow_code_execution,
                             chunk=args.chunk, logits_k=args.logits_k, allow_empty_domains=args.allow_empty_domains,
                             backend=args.backend, tensor_parallel_size=args.tensor_parallel_size,
                             gpu_memory_utilization=args.gpu_memory_utilization, sampling=sampling)
    summaries = traces(args.teacher, parse_pairs(args.problems, "--problems"), args.out, settings,
                       formats=parse_pairs(args.format, "--format"), backbone=args.backbone)
    for summary in summaries.values():
        print(summary.describe())
    return 0
