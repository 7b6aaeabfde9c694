"""A vLLM backend for :class:`preftune.generation.engine.GenerationEngine`, where vLLM and a GPU exist.

Status: **untested here** (this project's machines have no GPU and no vLLM). It follows vLLM's documented
offline API (``vllm.LLM.generate`` with ``TokensPrompt`` and ``SamplingParams(logprobs=0)``), and
preftune's own tests run only :class:`~preftune.generation.engine.HFEngine`.

Semantics kept equal to ``HFEngine``:

* ``sequences`` are the completion token ids, with the EOS or the stop string's tokens included
  (``include_stop_str_in_output`` is off, so vLLM cuts the stop string from the *text* only);
* ``logprobs`` are the sampled tokens' log-probs as vLLM reports them. Note vLLM returns them from the
  raw logits unless ``logprobs_mode="processed_logprobs"`` is set on the engine; online RL in preftune
  recomputes old log-probs with the training model anyway, so these are informational;
* ``finished`` is True when generation ended at EOS or a stop string (``finish_reason == "stop"``).

For online RL the policy's weights change every step; :meth:`VLLMEngine.load_weights` pushes a
state dict into the running vLLM model (vLLM's ``collective_rpc`` / ``load_weights`` path).
"""

from __future__ import annotations

import importlib.util

from preftune.errors import PreftuneError
from preftune.generation.engine import GenerationOutput, SamplingParams


def vllm_available() -> bool:
    """True when vLLM is importable and a CUDA GPU is present."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


class VLLMEngine:
    """Generation through vLLM's offline ``LLM`` (see the module docstring; untested on this project's CPU machines)."""

    def __init__(self, model_path: str, *, gpu_memory_utilization: float = 0.5, dtype: str = "auto", **llm_kwargs):
        if not vllm_available():
            raise PreftuneError("the vLLM backend needs the 'vllm' package and a CUDA GPU (pip install 'preftune[vllm]')")
        from vllm import LLM

        self.llm = LLM(model=model_path, gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, **llm_kwargs)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> GenerationOutput:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        vparams = VSamplingParams(
            n=1,
            max_tokens=params.max_new_tokens,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            stop=list(params.stop) or None,
            seed=params.seed,
            logprobs=0,
        )
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], vparams, use_tqdm=True)
        sequences, logprobs, texts, finished = [], [], [], []
        for out in outs:
            c = out.outputs[0]
            ids = list(c.token_ids)
            sequences.append(ids)
            lps = []
            for tok, table in zip(ids, c.logprobs or []):
                lps.append(float(table[tok].logprob) if table and tok in table else float("nan"))
            logprobs.append(lps)
            texts.append(c.text)
            finished.append(c.finish_reason == "stop")
        return GenerationOutput(sequences, logprobs, texts, finished, prompt_ids=[list(p) for p in prompt_ids])

    def on_policy_update(self, policy) -> None:
        """Online RL's hook after every optimizer step: the policy's new weights go to the vLLM workers."""
        self.load_weights(policy.state_dict())

    def load_weights(self, state_dict) -> None:
        """Copy the policy's current weights into the vLLM model (between RL steps)."""
        items = list(state_dict.items())

        def _load(worker):  # runs inside each vLLM worker
            worker.model_runner.model.load_weights(items)

        self.llm.collective_rpc(_load)
