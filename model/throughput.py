"""Model FLOPs utilisation: how much of the accelerator's peak the training step actually uses."""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched against the device name.
_PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10", 125e12),
    ("L4", 121e12),
    ("4090", 165e12),
    ("3090", 71e12),
)


def training_flops_per_token(config: PretrainedConfig, num_parameters: int, seq_len: int) -> float:
    """Forward + backward FLOPs per token of a decoder: 6 * matmul parameters + 12 * layers * hidden * seq_len.

    The input embedding is a lookup, not a matmul, so it is left out unless it is tied to the output head
    (then it counts once, as the head). The second term is the attention score / value products.
    """
    embedding = config.vocab_size * config.hidden_size
    matmul_params = num_parameters if config.tie_word_embeddings else num_parameters - embedding
    return 6.0 * matmul_params + 12.0 * config.num_hidden_layers * config.hidden_size * seq_len


def peak_flops_per_s(device: torch.device) -> float | None:
    """The bf16 peak of a known GPU, or None (CPU, unknown GPU): then no MFU is reported."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for marker, peak in _PEAK_BF16_FLOPS:
        if marker in name:
            return peak
    return None
