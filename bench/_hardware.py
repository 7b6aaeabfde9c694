"""The machine under a benchmark and the share of its peak a trainer reaches (issue 18).

Three pieces, shared by the side-by-side bench scripts:

* :func:`cpu_record`: the CPU (model name, the instruction-set flags that decide matmul speed, cores, torch's
  threads and version), read from ``lscpu``, else ``/proc/cpuinfo``, else ``platform``;
* :func:`matmul_peak` / :func:`peak_record`: the measured peak, GFLOP/s of large square matmuls in torch
  (fp32 always; bf16 only where the CPU has native bf16, or on CUDA);
* model-FLOP formulas (:class:`ModelShape`, :func:`forward_flops`, :func:`train_flops`, :func:`pair_forward_flops`,
  :func:`sequences_forward_flops`, :func:`generation_flops`): the work a number of tokens costs, counted the same way
  for both sides of a bench, and :func:`rates` to turn FLOPs and seconds into achieved GFLOP/s and MFU (model FLOPs
  utilisation: model FLOPs per second over the measured peak; Chowdhery et al. 2022, "PaLM", appendix B).

The FLOP counts are *model* FLOPs: the work the algorithm needs for the tokens it processes, not what an
implementation happens to execute. Work a side adds by its design (recomputing activations for gradient
checkpointing, a separate value network, padding, a prompt encoded twice, a no-gradient pass that one epoch of
one minibatch does not need) is not counted, so it lowers that side's share; work a side skips is not credited.

Run as a script it prints the record and the peak: ``OMP_NUM_THREADS=2 python bench/_hardware.py``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
import preftune  # noqa: E402  -- before torch: caps oneDNN's ISA so a bf16 matmul cannot pick AMX the OS lacks

# Flags that decide how fast torch's CPU matmuls run (x86: vector width, FMA, bf16/int8 dot products, AMX tiles;
# Arm: NEON, SVE, bf16 and int8 matrix instructions). Any other avx512*/amx* flag a CPU reports is kept too.
RELEVANT_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512dq", "avx512bw", "avx512vl",
                  "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
                  "asimd", "sve", "sve2", "bf16", "i8mm")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# ---------------------------------------------------------------------------------------------------------- the CPU


def parse_lscpu(text: str) -> dict:
    """``{"model_name", "flags"}`` from ``lscpu`` output (``Model name:`` and ``Flags:`` lines); absent keys are None / []."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return {"model_name": fields.get("model name") or None, "flags": relevant_flags(fields.get("flags", "").split())}


def parse_cpuinfo(text: str) -> dict:
    """``{"model_name", "flags"}`` from ``/proc/cpuinfo`` (the first processor's ``model name`` and ``flags``;
    ``Features`` on Arm)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    flags = fields.get("flags") or fields.get("features") or ""
    return {"model_name": fields.get("model name") or None, "flags": relevant_flags(flags.split())}


def relevant_flags(flags: list[str]) -> list[str]:
    """The matmul-relevant flags among ``flags``, sorted: :data:`RELEVANT_FLAGS` and every ``avx512*`` / ``amx*``."""
    present = set(flags)
    keep = {f for f in present if f in RELEVANT_FLAGS or f.startswith(("avx512", "amx"))}
    return sorted(keep)


def has_native_bf16(flags: list[str]) -> bool:
    """The CPU multiplies bf16 natively (AVX512-BF16 dot products or AMX-BF16 tiles). Without either, oneDNN
    emulates bf16, slower than fp32, and on some Intel AVX-512 CPUs a bf16 matmul can die unless
    ``ONEDNN_MAX_CPU_ISA`` caps it, so the peak probe never runs bf16 there."""
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def _read(command: list[str] | None = None, path: str | None = None) -> str | None:
    try:
        if command is not None:
            out = subprocess.run(command, capture_output=True, text=True, timeout=10,
                                 env={**os.environ, "LC_ALL": "C"})
            return out.stdout if out.returncode == 0 else None
        return Path(path).read_text()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_record(threads: int | None = None) -> dict:
    """The CPU a bench ran on: ``{"model_name", "flags", "native_bf16", "cores", "usable_cores", "torch_threads",
    "torch_version", "onednn_max_cpu_isa", "source"}``. ``source`` says where the name and flags came from
    (``lscpu``, ``/proc/cpuinfo`` or ``platform``: no flags then). ``torch_threads`` is ``threads`` when given,
    else torch's current setting."""
    import torch

    parsed, source = None, None
    text = _read(command=["lscpu"])
    if text:
        parsed, source = parse_lscpu(text), "lscpu"
    if not parsed or not parsed["model_name"] or not parsed["flags"]:
        info = _read(path="/proc/cpuinfo")
        if info:
            fallback = parse_cpuinfo(info)
            if parsed is None:
                parsed, source = fallback, "/proc/cpuinfo"
            else:  # lscpu without a field (Arm lscpu prints no Flags on some kernels): fill it from cpuinfo
                parsed = {"model_name": parsed["model_name"] or fallback["model_name"],
                          "flags": parsed["flags"] or fallback["flags"]}
                source = "lscpu + /proc/cpuinfo"
    if parsed is None:
        parsed, source = {"model_name": None, "flags": []}, "platform"
    name = parsed["model_name"] or platform.processor() or platform.machine() or "unknown"
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"model_name": name, "flags": parsed["flags"], "native_bf16": has_native_bf16(parsed["flags"]),
            "cores": os.cpu_count(), "usable_cores": usable,
            "torch_threads": threads if threads is not None else torch.get_num_threads(),
            "torch_version": torch.__version__, "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "machine": platform.machine(), "source": source}


# ------------------------------------------------------------------------------------------------------- the peak

CPU_SIZES = (1024, 2048, 4096)
CUDA_SIZES = (4096, 8192)


def matmul_rates(dtype, *, threads: int | None = None, sizes=CPU_SIZES, repeats: int = 3, device: str = "cpu",
                 flags: list[str] | None = None, slow_s: float = 2.0) -> dict[int, float]:
    """GFLOP/s of one ``n × n`` by ``n × n`` matmul (2·n³ FLOPs) for each ``n`` in ``sizes``: one warm-up call,
    then the best of ``repeats`` timed calls (one when a call takes over ``slow_s`` seconds). On CUDA each call is
    bracketed by ``torch.cuda.synchronize()``. On a CPU bf16 is refused unless ``flags`` (default: this CPU's)
    include native bf16 (see :func:`has_native_bf16`). ``threads`` sets torch's threads for the probe only."""
    import torch

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if device == "cpu" and dtype == torch.bfloat16:
        flags = cpu_record()["flags"] if flags is None else flags
        if not has_native_bf16(flags):
            raise ValueError("bf16 matmul peak: this CPU has no native bf16 (neither avx512_bf16 nor amx_bf16 in "
                             "its flags); bf16 is emulated there and may crash oneDNN, so it is not probed")
        if not preftune.BF16_CPU_SAFE:
            raise ValueError("bf16 matmul peak: torch was imported before preftune, so oneDNN's ISA is not capped "
                             "(ONEDNN_MAX_CPU_ISA); import preftune (or bench/_hardware.py) first")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    rates: dict[int, float] = {}
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        for n in sizes:
            a = torch.randn(n, n, generator=gen, device=device).to(dtype)
            b = torch.randn(n, n, generator=gen, device=device).to(dtype)
            out = torch.empty(n, n, device=device, dtype=dtype)
            sync()
            t = time.perf_counter()
            torch.matmul(a, b, out=out)
            sync()
            first = time.perf_counter() - t
            best = float("inf")
            for _ in range(1 if first > slow_s else repeats):
                t = time.perf_counter()
                torch.matmul(a, b, out=out)
                sync()
                best = min(best, time.perf_counter() - t)
            rates[n] = 2 * n**3 / best / 1e9
            del a, b, out
    finally:
        torch.set_num_threads(before)
    return rates


def matmul_peak(dtype, threads: int | None = None, **kwargs) -> float:
    """The measured peak in GFLOP/s: the best of :func:`matmul_rates` over its sizes (same arguments)."""
    return max(matmul_rates(dtype, threads=threads, **kwargs).values())


def peak_record(threads: int | None = None, *, device: str = "cpu", sizes=None, repeats: int = 3) -> dict:
    """The peaks a bench compares against, measured now in this process: ``{"fp32", "bf16", "fp32_by_size",
    "bf16_by_size", "bf16_skipped", "method"}`` in GFLOP/s. bf16 is None (with the reason in ``bf16_skipped``)
    on a CPU without native bf16. On CUDA fp32 is plain fp32 (TF32 as torch is set: recorded)."""
    import torch

    sizes = sizes or (CUDA_SIZES if device.startswith("cuda") else CPU_SIZES)
    fp32 = matmul_rates(torch.float32, threads=threads, sizes=sizes, repeats=repeats, device=device)
    out = {"fp32": round(max(fp32.values()), 1), "fp32_by_size": {str(n): round(r, 1) for n, r in fp32.items()},
           "bf16": None, "bf16_by_size": None, "bf16_skipped": None}
    try:
        bf16 = matmul_rates(torch.bfloat16, threads=threads, sizes=sizes, repeats=repeats, device=device)
        out |= {"bf16": round(max(bf16.values()), 1), "bf16_by_size": {str(n): round(r, 1) for n, r in bf16.items()}}
    except ValueError as e:
        out["bf16_skipped"] = str(e)
    out["method"] = (f"torch.matmul of random n x n matrices, n in {list(sizes)}, 2*n^3 FLOPs each, one warm-up "
                     f"then best of {repeats}; {threads if threads is not None else torch.get_num_threads()} threads"
                     + ("; torch.cuda.synchronize around each call, TF32 "
                        + ("on" if torch.backends.cuda.matmul.allow_tf32 else "off") if device.startswith("cuda") else ""))
    return out


def hardware_record(threads: int | None = None, device: str = "cpu") -> dict:
    """What every side-by-side bench writes before its sides run: ``{"cpu": cpu_record, "peak_gflops":
    peak_record}`` (and ``"gpu"``: the device name, on CUDA)."""
    record = {"cpu": cpu_record(threads), "peak_gflops": peak_record(threads, device=device)}
    if device.startswith("cuda"):
        import torch

        record["gpu"] = torch.cuda.get_device_name()
    print(f"[hardware] {record['cpu']['model_name']} ({' '.join(record['cpu']['flags'])}); peak GFLOP/s fp32 "
          f"{record['peak_gflops']['fp32']:.1f}, bf16 {record['peak_gflops']['bf16'] or 'not probed'}", flush=True)
    return record


# -------------------------------------------------------------------------------------------------- model FLOPs


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP formulas need of a decoder-only transformer.

    ``non_embedding_params``: N of Kaplan et al. 2020 ("Scaling Laws for Neural Language Models", §2.1): every
    parameter but the input embedding and the output head (LM head or a reward model's score head). The output
    head's matmul (2·d_model·vocab FLOPs per token where logits are taken) is therefore not counted, as in Kaplan's
    non-embedding C; a side that takes logits at every position does that work uncredited.
    ``n_layer`` and ``d_attn`` (query heads × head dimension) give the attention term.
    """

    non_embedding_params: int
    n_layer: int
    d_attn: int

    @classmethod
    def from_model(cls, model) -> ModelShape:
        """Count the parameters of ``model`` (a transformers causal LM or sequence classifier); shared tensors once."""
        params = {id(p): p.numel() for p in model.parameters()}
        for module in (model.get_input_embeddings(), _output_head(model)):
            if module is not None:
                params.pop(id(module.weight), None)
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        return cls(sum(params.values()), *_layers_and_d_attn(config))

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """The shape of the causal LM ``config`` describes, built on the meta device (no weights, no memory)."""
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return cls.from_model(model)

    @classmethod
    def from_pretrained(cls, name_or_path=None) -> ModelShape:
        """The shape of a model folder's config (default: preftune's default model); reads only config.json."""
        from transformers import AutoConfig

        from preftune.models.loading import resolve_model_path

        return cls.from_config(AutoConfig.from_pretrained(resolve_model_path(name_or_path)))


def _output_head(model):
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head if head is not None else getattr(model, "score", None)


def _layers_and_d_attn(config) -> tuple[int, int]:
    n_layer = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head")
    d_model = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    head_dim = getattr(config, "head_dim", None) or d_model // heads
    return n_layer, heads * head_dim


def forward_flops(shape: ModelShape, tokens: int, ctx: float) -> float:
    """Forward FLOPs of ``tokens`` tokens each attending over ``ctx`` positions (Kaplan et al. 2020, Table 1):
    2·N per token for the weight matmuls plus 2·n_layer·ctx·d_attn per token for attention (Kaplan's term, which
    counts the query-key products; PaLM's 12·L·H·Q·T also counts the value products and is twice it).
    Forward-only passes (reference log-probs, rollout scoring, a reward model) cost this."""
    return 2.0 * shape.non_embedding_params * tokens + 2.0 * shape.n_layer * ctx * shape.d_attn * tokens


def train_flops(shape: ModelShape, tokens: int, ctx: float) -> float:
    """Training FLOPs (forward and backward) of ``tokens`` tokens at context ``ctx``: 3 × :func:`forward_flops`,
    i.e. 6·N·T + 6·n_layer·ctx·d_attn·T, the backward costing twice the forward (Kaplan et al. 2020, §2.1)."""
    return 3.0 * forward_flops(shape, tokens, ctx)


def sequences_forward_flops(shape: ModelShape, lengths) -> float:
    """Forward FLOPs of whole sequences of the given lengths, each token charged its sequence's length as context
    (Kaplan's n_ctx; the full L × L score matrix, not the causal half): Σ_L 2·N·L + 2·n_layer·d_attn·L².
    Times 3 for training."""
    return sum(forward_flops(shape, n, n) for n in lengths)


def pair_forward_flops(shape: ModelShape, prompt: int, chosen: int, rejected: int) -> float:
    """Forward FLOPs of one preference pair, the prompt counted once (its states serve both completions): the
    sequence prompt + chosen, then the rejected tokens at context prompt + rejected. Times 3 for training,
    times 1 more for the reference model's forward (DPO)."""
    return forward_flops(shape, prompt + chosen, prompt + chosen) + forward_flops(shape, rejected, prompt + rejected)


def generation_flops(shape: ModelShape, prompt: int, new_tokens: int) -> float:
    """Decoding FLOPs of ``new_tokens`` tokens after a prompt of ``prompt`` tokens: 2·N per new token plus
    attention over the KV cache, the j-th new token attending prompt + j positions:
    2·N·c + 2·n_layer·d_attn·(c·p + c(c+1)/2). The prompt's prefill is not counted (forward_flops gives it)."""
    c = new_tokens
    return 2.0 * shape.non_embedding_params * c + 2.0 * shape.n_layer * shape.d_attn * (c * prompt + c * (c + 1) / 2)


def rates(flops: float, seconds: float, peak_gflops: float | None) -> dict:
    """``{"model_gflop", "seconds", "achieved_gflops", "mfu"}``: model FLOPs over the seconds, and its share of the
    peak (None when no peak was measured or no time passed)."""
    achieved = flops / seconds / 1e9 if seconds > 0 else None
    mfu = achieved / peak_gflops if achieved is not None and peak_gflops else None
    return {"model_gflop": round(flops / 1e9, 3), "seconds": round(seconds, 3),
            "achieved_gflops": None if achieved is None else round(achieved, 3),
            "mfu": None if mfu is None else round(mfu, 4)}


FORMULA = ("model FLOPs (bench/_hardware.py): training 6*N*T + 6*n_layer*ctx*d_attn*T, forward-only 2*N*T + "
           "2*n_layer*ctx*d_attn*T (Kaplan et al. 2020), generation 2*N + 2*n_layer*d_attn*(prompt+j) per new token; "
           "N = non-embedding parameters (no embedding, no output head), ctx = the sequence's length; a preference "
           "pair's prompt counted once; mfu = achieved GFLOP/s / measured fp32 matmul peak")


def shape_record(shape: ModelShape) -> dict:
    return asdict(shape)


if __name__ == "__main__":
    threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or None
    print(json.dumps(hardware_record(threads), indent=2))
