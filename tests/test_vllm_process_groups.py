"""One-process vLLM engines of a dense and a MoE model in one process: vLLM keeps one set of parallel
groups per process, so a MoE engine beside a live dense one is refused with a clear error, and starts
once the dense one is freed; and an engine's owner that first imported vLLM is freed with its engine."""
from __future__ import annotations

import gc
import re
import subprocess
import sys

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


FIRST_IMPORT = """
import gc, os, weakref
from pathlib import Path
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from alloy.branch.sampling import SamplingSettings, VLLMTeacher
teacher = VLLMTeacher(Path({folder!r}), SamplingSettings(temperature=0.0, max_new_tokens=4),
                      gpu_memory_utilization=0.05)
owner = weakref.ref(teacher)
del teacher
gc.collect()
from vllm.distributed import parallel_state
print("freed", owner() is None, "groups", parallel_state.model_parallel_is_initialized())
"""


@pytest.mark.slow
def test_an_engine_owner_that_first_imported_vllm_is_freed(tmp_path, tiny_tokenizer):
    """The vLLM teacher imports vLLM in its `__init__`. vLLM keeps a failed optional import's exception,
    whose traceback held that frame (and the teacher, its engine and the parallel groups) for good;
    `vllm_lm.release_import_frames` lets it go. Run in a fresh process, where that import is the first."""
    dense = write_parents(tmp_path / "dense", "llama", tiny_tokenizer, n=1, vllm=True)[0]
    run = subprocess.run([sys.executable, "-c", FIRST_IMPORT.format(folder=str(dense))], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "freed True groups False"
