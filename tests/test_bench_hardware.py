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
