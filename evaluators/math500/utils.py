"""lm-eval glue for math500; the logic lives in alloy.evaluation."""
from alloy.evaluation.answers import keep_all_responses, math_score, repeat_scores
from alloy.evaluation.datasets import load_task_dataset, math_record, ordered_docs

__all__ = ["keep_all_responses", "load_task_dataset", "process_docs", "process_results"]


def process_docs(dataset):
    """{id, problem, answer} records in the seeded nested order."""
    return ordered_docs(dataset, lambda raw: math_record(raw, "math500"))


def process_results(doc, results):
    """exact_match (LaTeX-equivalence) averaged over the doc's responses (its avg@n) and pass@k for k <= n."""
    return repeat_scores(results, lambda response: math_score(response, doc["answer"]))
