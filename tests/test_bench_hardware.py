"""bench/_hardware.py (issue 18): the CPU record, the matmul peak probe and the model-FLOP formulas, with the
numbers worked out by hand on a tiny Llama, and the share-of-peak summaries the side-by-side benches write."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import _hardware as hw  # noqa: E402

# The tiny Llama: hidden 32, MLP 64, 2 layers, 4 query heads and 2 KV heads of dimension 8, tied embeddings.
# Per layer: q 32x32 = 1024, k and v 32x16 = 512 each, o 32x32 = 1024 (3072); gate, up, down 32x64 = 2048 each
# (6144); two RMSNorm weights of 32 (64): 9280. Two layers 18560, the final norm 32: N = 18592.
N = 18592
TINY = hw.ModelShape(non_embedding_params=N, n_layer=2, d_attn=32)

INTEL_LSCPU = """\
Architecture:                       x86_64
CPU op-mode(s):                     32-bit, 64-bit
Vendor ID:                          GenuineIntel
Model name:                         Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz
CPU family:                         6
Thread(s) per core:                 2
Flags:                              fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand hypervisor avx2 bmi2 avx512f avx512dq rdseed adx smap clflushopt clwb avx512cd avx512bw avx512vl xsaveopt avx512_vnni arat
L1d cache:                          64 KiB (2 instances)
"""
AMD_BF16_LSCPU = """\
Architecture:                            x86_64
Vendor ID:                               AuthenticAMD
Model name:                              AMD EPYC 9R14 96-Core Processor
Flags:                                   fpu vme de pse sse sse2 ht syscall nx mmxext pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand avx2 bmi2 avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vbmi2 avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid fsrm
"""
AMD_AVX2_LSCPU = """\
Architecture:                            x86_64
Vendor ID:                               AuthenticAMD
Model name:                              AMD EPYC 7R13 Processor
Flags:                                   fpu vme de pse sse sse2 ht syscall nx mmxext pni ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand avx2 bmi1 bmi2 sha_ni clzero
"""
CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8 avx_vnni

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
"""


def test_intel_avx512_without_bf16():
    cpu = hw.parse_lscpu(INTEL_LSCPU)
    assert cpu == {"model_name": "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz",
                   "flags": ["avx", "avx2", "avx512_vnni", "avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl",
                             "f16c", "fma", "sse4_2"]}
    assert hw.has_native_bf16(cpu["flags"]) is False


def test_amd_epyc_with_avx512_bf16():
    cpu = hw.parse_lscpu(AMD_BF16_LSCPU)
    assert cpu["model_name"] == "AMD EPYC 9R14 96-Core Processor"
    assert {"avx512f", "avx512_bf16", "avx512_vnni", "avx2"} <= set(cpu["flags"])
    assert "pclmulqdq" not in cpu["flags"]  # not a matmul flag
    assert hw.has_native_bf16(cpu["flags"]) is True


def test_amd_epyc_avx2_only():
    cpu = hw.parse_lscpu(AMD_AVX2_LSCPU)
    assert cpu == {"model_name": "AMD EPYC 7R13 Processor", "flags": ["avx", "avx2", "f16c", "fma", "sse4_2"]}
    assert hw.has_native_bf16(cpu["flags"]) is False


def test_cpuinfo_fallback_reads_the_first_processor_and_amx():
    cpu = hw.parse_cpuinfo(CPUINFO)
    assert cpu["model_name"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu["flags"] == ["amx_bf16", "amx_int8", "amx_tile", "avx", "avx2", "avx512_bf16", "avx512_fp16", "avx512f",
                            "avx_vnni", "fma"]
    assert hw.has_native_bf16(cpu["flags"]) is True


def test_empty_text_gives_no_name_and_no_flags():
    assert hw.parse_lscpu("") == {"model_name": None, "flags": []}
    assert hw.parse_cpuinfo("garbage without colons") == {"model_name": None, "flags": []}


def test_cpu_record_of_this_machine():
    rec = hw.cpu_record(threads=1)
    assert rec["torch_threads"] == 1 and rec["torch_version"] == torch.__version__
    assert rec["cores"] >= 1 and rec["model_name"]
    assert rec["native_bf16"] == hw.has_native_bf16(rec["flags"])


def test_matmul_peak_is_positive_and_quick():
    import time

    t = time.perf_counter()
    peak = hw.matmul_peak(torch.float32, threads=1, sizes=(64, 128), repeats=2)
    assert peak > 0.0
    assert time.perf_counter() - t < 5.0


def test_bf16_peak_is_never_probed_without_native_bf16():
    with pytest.raises(ValueError, match="this CPU has no native bf16 \\(neither avx512_bf16 nor amx_bf16"):
        hw.matmul_rates(torch.bfloat16, sizes=(64,), flags=hw.parse_lscpu(INTEL_LSCPU)["flags"])


def test_peak_record_skips_bf16_on_avx2(monkeypatch):
    monkeypatch.setattr(hw, "cpu_record", lambda threads=None: {"flags": hw.parse_lscpu(AMD_AVX2_LSCPU)["flags"]})
    rec = hw.peak_record(1, sizes=(64,), repeats=1)
    assert rec["fp32"] > 0 and rec["bf16"] is None and rec["bf16_by_size"] is None
    assert "no native bf16" in rec["bf16_skipped"]
    assert list(rec["fp32_by_size"]) == ["64"]


def test_model_shape_of_the_tiny_llama():
    from transformers import AutoModelForSequenceClassification

    from preftune.models.loading import tiny_model

    model = tiny_model(400)
    assert hw.ModelShape.from_model(model) == TINY
    assert hw.ModelShape.from_config(model.config) == TINY
    config = model.config
    config.num_labels = 1  # a reward model: the score head is the output head, not counted either
    assert hw.ModelShape.from_model(AutoModelForSequenceClassification.from_config(config)) == TINY


def test_forward_and_training_flops_by_hand():
    # 10 tokens at context 10: 2*N*10 = 371,840; attention 2 * 2 layers * 10 * 32 * 10 = 12,800
    assert hw.forward_flops(TINY, 10, 10) == 384_640
    assert hw.train_flops(TINY, 10, 10) == 3 * 384_640 == 1_153_920  # 6NT + 6 n_layer ctx d_attn T
    # sequences of 3 and 5 tokens: 2N*8 = 297,472; attention 2*2*32*(9 + 25) = 4,352
    assert hw.sequences_forward_flops(TINY, [3, 5]) == 301_824


def test_pair_flops_count_the_prompt_once():
    # prompt 4, chosen 3, rejected 2: the sequence of 7 (2N*7 = 260,288; 2*2*32*7*7 = 6,272), then 2 rejected tokens
    # at context 6 (2N*2 = 74,368; 2*2*32*6*2 = 1,536)
    assert hw.pair_forward_flops(TINY, 4, 3, 2) == 260_288 + 6_272 + 74_368 + 1_536 == 342_464


def test_generation_flops_by_hand():
    # 4 new tokens after a 3-token prompt attend 4, 5, 6, 7 positions: 2N*4 = 148,736; 2*2*32*22 = 2,816
    assert hw.generation_flops(TINY, 3, 4) == 151_552
    assert hw.generation_flops(TINY, 3, 0) == 0


def test_rates():
    assert hw.rates(3e9, 2.0, 3.0) == {"model_gflop": 3.0, "seconds": 2.0, "achieved_gflops": 1.5, "mfu": 0.5}
    assert hw.rates(3e9, 2.0, None)["mfu"] is None
    assert hw.rates(3e9, 0.0, 3.0)["achieved_gflops"] is None


# ------------------------------------------------------------------ the benches' summaries, on captured side results

HARDWARE = {"cpu": {"model_name": "AMD EPYC", "flags": ["avx2", "avx512_bf16", "avx512f"]},
            "peak_gflops": {"fp32": 4.0, "bf16": 8.0}}


def test_dpo_summary_charges_both_sides_the_same_flops():
    import dpo_vs_trl

    # two pairs of (prompt 4, chosen 3, rejected 2): per pair 4 x 342,464 (training 3x, reference 1x) = 1,369,856;
    # two pairs 2,739,712 FLOPs; preftune in 2.739712 ms is 1.0 GFLOP/s (a quarter of the 4.0 peak), TRL twice as slow
    out = dpo_vs_trl.share_of_peak({"seconds": 2.739712e-3}, {"seconds": 5.479424e-3}, HARDWARE, TINY,
                                   [(4, 3, 2), (4, 3, 2)], pairs_trained=2, max_length=8)
    assert out["model_flops"]["gflop"] == 0.003
    assert (out["preftune_achieved_gflops_whole_run"], out["preftune_mfu_whole_run"]) == (1.0, 0.25)
    assert (out["trl_achieved_gflops_whole_run"], out["trl_mfu_whole_run"]) == (0.5, 0.125)
    assert out["tokens"] | {"source": None} == {"pairs": 2, "pairs_trained": 2, "prompt": 8, "chosen": 6, "rejected": 4,
                                                "pairs_over_max_length": 0, "source": None}
    assert out["cpu"] == HARDWARE["cpu"] and out["peak_gflops"] == HARDWARE["peak_gflops"]
    assert "preftune_mfu_update" not in out  # no loop time captured
    # preftune's training loop alone: 3 of the 4 forwards (2,054,784 FLOPs) in 1.027392 ms is 2.0 GFLOP/s
    timed = dpo_vs_trl.share_of_peak({"seconds": 2.739712e-3, "train_loop_seconds": 1.027392e-3},
                                     {"seconds": 5.479424e-3}, HARDWARE, TINY, [(4, 3, 2), (4, 3, 2)], 2, 8)
    assert (timed["preftune_achieved_gflops_update"], timed["preftune_mfu_update"]) == (2.0, 0.5)
    assert "trl_mfu_update" not in timed
    # a 4-token limit: 4 + max(3, 2) = 7 tokens is over it, for both pairs
    assert dpo_vs_trl.share_of_peak({"seconds": 1.0}, {"seconds": 1.0}, HARDWARE, TINY, [(4, 3, 2)] * 2, 2,
                                    4)["tokens"]["pairs_over_max_length"] == 2


def test_reward_summary_is_training_only():
    import reward_vs_trl

    # per pair 3 x 342,464 = 1,027,392; two pairs 2,054,784 FLOPs over each side's training seconds
    out = reward_vs_trl.share_of_peak({"preftune_train_seconds": 2.054784e-3, "trl_train_seconds": 4.109568e-3},
                                      HARDWARE, TINY, [(4, 3, 2), (4, 3, 2)])
    assert (out["preftune_achieved_gflops"], out["preftune_mfu"]) == (1.0, 0.25)
    assert (out["trl_achieved_gflops"], out["trl_mfu"]) == (0.5, 0.125)
    # one side only (--only preftune): no TRL keys
    assert "trl_mfu" not in reward_vs_trl.share_of_peak({"preftune_train_seconds": 1.0}, HARDWARE, TINY, [(4, 3, 2)])


def _online_side(train=True):
    side = {"step_lengths": [{"prompt": [50], "completion": [50]}, {"prompt": [3], "completion": [4]}],
            "step_seconds": [9.0, 0.002], "generate_seconds": [5.0, 0.001]}
    if train:
        side["train_seconds"] = [3.0, 0.0005]
    return side


def test_online_share_counts_steps_after_the_first():
    from _online_common import compare_share, share_of_peak

    # step 2 only: prompt 3 + response 4. Generation 151,552; the 7-token sequence's forward 2N*7 + 2*2*32*49 =
    # 266,560 (the reference pass); training 3 x 266,560 = 799,680
    share = share_of_peak(_online_side(), TINY, 2.0, reference_pass=True, reward_model=False)
    assert share["measures"] == "steps 2..n" and share["tokens"] == {"prompt": 3, "completion": 4, "steps": 1}
    assert share["whole_step"]["achieved_gflops"] == 0.609  # (151,552 + 266,560 + 799,680) / 2 ms
    assert share["after_generation"]["achieved_gflops"] == 1.066  # (266,560 + 799,680) / 1 ms
    assert share["generation"]["achieved_gflops"] == 0.152  # 151,552 / 1 ms
    assert (share["update"]["achieved_gflops"], share["update"]["mfu"]) == (1.599, 0.7997)  # 799,680 / 0.5 ms
    # a reward model's forward is counted like the reference's; no reference pass when beta = 0
    both = share_of_peak(_online_side(), TINY, 2.0, reference_pass=True, reward_model=True)
    assert both["after_generation"]["model_gflop"] == round((2 * 266_560 + 799_680) / 1e9, 3)
    none = share_of_peak(_online_side(False), TINY, 2.0, reference_pass=False, reward_model=False)
    assert none["after_generation"]["achieved_gflops"] == 0.8 and "update" not in none  # 799,680 / 1 ms

    keys = compare_share(share, none, "rloo")
    assert keys["preftune_rloo_mfu_update"] == 0.7997 and "trl_rloo_mfu_update" not in keys
    assert keys["trl_rloo_achieved_gflops_after_generation"] == 0.8
    assert set(compare_share(share, None)) == {f"preftune_{k}_{m}" for k in ("achieved_gflops", "mfu")
                                               for m in ("update", "after_generation", "whole_step", "generation")}


def test_online_share_with_one_step_uses_it():
    from _online_common import share_of_peak

    side = {"step_lengths": [{"prompt": [3], "completion": [4]}], "step_seconds": [0.002], "generate_seconds": [0.001]}
    share = share_of_peak(side, TINY, 2.0, reference_pass=True, reward_model=False)
    assert share["measures"] == "all steps" and share["whole_step"]["achieved_gflops"] == 0.609


def test_trl_timings_refuse_misaligned_steps():
    from _online_common import generated_lengths, trl_timings

    good = {"timings_s": {"step": [1.0, 2.0], "generate": [0.5, 0.6]},
            "step_lengths": [{"prompt": [3], "completion": [4]}, {"prompt": [3], "completion": [5]}]}
    assert trl_timings(good) == {"step_lengths": good["step_lengths"], "step_seconds": [1.0, 2.0],
                                 "generate_seconds": [0.5, 0.6]}
    assert trl_timings(good | {"timings_s": {"step": [1.0, 2.0], "generate": [0.5]}}) is None  # two steps, one call
    assert trl_timings(good | {"step_lengths": [None, good["step_lengths"][1]]}) is None
    # TRL 1.x _generate: (prompt_ids, completion_ids, ...) as unpadded id lists
    assert generated_lengths(([[1, 2, 3], [1, 2]], [[7, 2], [7, 8, 9, 2]], None)) == {"prompt": [3, 2], "completion": [2, 4]}
    assert generated_lengths(None) is None


def test_ppo_lengths_strip_left_padding_and_cut_after_eos():
    from ppo_vs_trl import ppo_lengths

    pad, eos = 0, 2
    queries = torch.tensor([[0, 0, 5, 6], [7, 0, 5, 6]])  # row 2: a pad id inside the prompt is not padding
    responses = torch.tensor([[9, 2, 0, 0], [9, 9, 9, 9]])
    assert ppo_lengths(queries, torch.cat([queries, responses], 1), pad, eos) == {"prompt": [2, 4],
                                                                                  "completion": [2, 4]}


def test_generation_share_and_its_peak():
    from generation_vs_hf import generation_share, peak_of

    # two rows after prompts of 3: 4 new tokens (151,552) and none (0), in 1 ms: 0.152 GFLOP/s
    assert generation_share(TINY, [3, 3], [[5, 6, 7, 2], []], 1e-3, 2.0) == {
        "model_gflop": 0.0, "seconds": 0.001, "achieved_gflops": 0.152, "mfu": 0.0758}
    peaks = {"fp32": 100.0, "bf16": 400.0}
    assert peak_of("torch.bfloat16", peaks) == ("bf16", 400.0)
    assert peak_of("torch.float32", peaks) == ("fp32", 100.0)
    assert peak_of("torch.bfloat16", {"fp32": 100.0, "bf16": None}) == ("bf16", None)
    with pytest.raises(ValueError):  # every row needs its prompt
        generation_share(TINY, [3], [[5], [6]], 1.0, 2.0)
