"""lm-eval glue for gpqa_diamond; the logic lives in alloy.evaluation."""
from alloy.evaluation.answers import gpqa_score, keep_all_responses, mean_score
from alloy.evaluation.datasets import gpqa_records, load_task_dataset, ordered_docs

__all__ = ["keep_all_responses", "load_task_dataset", "process_docs", "process_results"]


def process_docs(dataset):
    """Rows with lm-eval's seeded choice shuffle, then in the seeded nested order."""
    return ordered_docs(gpqa_records(dataset), lambda record: record)


def process_results(doc, results):
    """exact_match on the answer letter, averaged over the doc's responses."""
    return {"exact_match": mean_score(results, lambda response: gpqa_score(response, doc["answer"]))}
