"""Datasheet peak rates of accelerators, the denominator of MFU (the model FLOPs are :mod:`mae.flops`)."""
from __future__ import annotations

# Dense (no sparsity) peak rates in TFLOP/s from the vendors' datasheets, by dtype; the first
# matching name fragment wins, so more specific names come first.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM5 / HBM3
    ("H200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("GH200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.1, "fp16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
)


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """Datasheet peak of ``device_name`` for ``dtype`` (bf16 | fp16 | tf32 | fp32), or None if unknown."""
    for fragment, table in PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            return table.get(dtype)
    return None
