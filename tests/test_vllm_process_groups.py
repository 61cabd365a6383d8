"""One-process vLLM engines of a dense and a MoE model in one process: vLLM keeps one set of parallel
groups per process, so a MoE engine beside a live dense one is refused with a clear error, and starts
once the dense one is freed."""
from __future__ import annotations

import gc
import re

import pytest

pytest.importorskip("vllm")

from alloy.errors import AlloyError  # noqa: E402
from tests.parents import write_parents  # noqa: E402


@pytest.mark.slow
def test_a_moe_engine_beside_a_live_dense_one_is_refused_and_starts_once_it_is_freed(tmp_path, tiny_tokenizer):
    from vllm import SamplingParams

    from alloy.evaluation.vllm_lm import local_engine

    dense = write_parents(tmp_path / "dense", "llama", tiny_tokenizer, n=1, vllm=True)[0]
    moe = write_parents(tmp_path / "moe", "qwen3_moe", tiny_tokenizer, n=1, vllm=True)[0]
    llm = local_engine(str(dense), dtype="float32", enforce_eager=True)
    with pytest.raises(AlloyError, match=re.escape(f"{moe} is a mixture-of-experts model, and a one-process vLLM "
                                                   "engine for a dense model is still alive in this process")):
        local_engine(str(moe), dtype="float32", enforce_eager=True)
    del llm
    gc.collect()
    llm = local_engine(str(moe), dtype="float32", enforce_eager=True)
    out = llm.generate([{"prompt_token_ids": [1, 5, 7, 9]}],
                       SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 4
    del llm
    gc.collect()
