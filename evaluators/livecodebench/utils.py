"""lm-eval glue for livecodebench; the logic lives in alloy.evaluation.livecodebench."""
from alloy.evaluation.answers import keep_all_responses
from alloy.evaluation.livecodebench import build_prompt, load_problems, process_docs, score_responses

__all__ = ["doc_to_text", "keep_all_responses", "load_problems", "process_docs", "process_results"]


def doc_to_text(doc):
    """LiveCodeBench's code-generation prompt."""
    return build_prompt(doc)


def process_results(doc, results):
    """pass@k (k <= n responses) and pass@1_<difficulty> of the doc (runs code in the sandbox)."""
    return score_responses(doc, results)
