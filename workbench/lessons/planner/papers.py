"""The papers' numbers the planner reproduces from configs alone.

``LORA_PAPER_GPT3``: the LoRA paper's GPT-3 175B counts and memory (Hu et al. 2021,
arXiv:2106.09685).  ``QLORA_PAPER_65B``: the QLoRA paper's headline for LLaMA 65B and the
``plan`` calls that reproduce it (Dettmers et al. 2023, arXiv:2305.14314).
"""

from __future__ import annotations

from typing import Any

__all__ = ["LORA_PAPER_GPT3", "QLORA_PAPER_65B"]

#: The LoRA paper's GPT-3 175B numbers (Hu et al. 2021, section 4.2 "Practical benefits").
LORA_PAPER_GPT3: dict[str, Any] = {
    "full_training_vram": 1.2e12,  # "we reduce the VRAM consumption during training from 1.2TB
    "lora_training_vram": 350e9,   #  to 350GB"
    "full_checkpoint": 350e9,      # "the checkpoint size is reduced by roughly 10,000x
    "lora_checkpoint": 35e6,       #  (from 350GB to 35MB)"
    "rank": 4,                     # "with r = 4 and only the query and value projection
    "targets": ("query", "value"),  #  matrices being adapted"
    "trainable_r8_qv": 37_748_736,  # Table 4: 37.7M (r = 8 on W_q, W_v)
}


#: The QLoRA paper's headline (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of
#: Quantized LLMs", arXiv:2305.14314, abstract and section 1): "regular 16-bit finetuning
#: of a LLaMA 65B parameter model requires more than 780 GB of GPU memory"; QLoRA
#: "reduces the average memory requirements of finetuning a 65B parameter model from
#: >780GB of GPU memory to <48GB".  The two plans that reproduce it from the config alone
#: are issue 11's calls, verbatim: ``plan(QLORA_PAPER_65B["architecture"], **QLORA_PAPER_65B["qlora"])``
#: (``method="lora", quantize="nf4", gradient_checkpointing=True, batch_size=1, seq_len=512``)
#: and ``**QLORA_PAPER_65B["full"]`` (``method="full", dtype="bf16"``, the same checkpointing,
#: batch and length).  Everything else is ``plan``'s defaults: with ``quantize`` the dtype is
#: bf16, a 16-bit plan's optimizer is AdamW with float32 moments ("adamw-32bit"), so full
#: fine-tuning costs 2 + 2 + 8 = 12 bytes per parameter (65.3B x 12 = 783 GB, the paper's
#: ">780 GB", which counts no activations: it holds with or without checkpointing), and the
#: LoRA settings are ``LoRAConfig``'s (r = 8 on query and value).  ``["qlora_recipe"]`` is
#: QLoRA as the paper trains it: LoRA r = 64 (alpha 16) on every linear layer of the blocks,
#: paged AdamW with 32-bit states, one unpadded sequence on CUDA's kernels; it is under
#: 48 GB too.  Left out: the paper's LoRA dropout (0.05 or 0.1), whose masks in the
#: recomputed block add under 0.1 GB at this size.
QLORA_PAPER_65B: dict[str, Any] = {
    "architecture": "llama-1-65b",
    "full_16bit_more_than": 780e9,
    "qlora_less_than": 48e9,
    "qlora": dict(method="lora", quantize="nf4", gradient_checkpointing=True, batch_size=1, seq_len=512),
    "full": dict(method="full", dtype="bf16", gradient_checkpointing=True, batch_size=1, seq_len=512),
    "qlora_recipe": dict(method="lora", quantize="nf4", gradient_checkpointing=True, batch_size=1, seq_len=512,
                         rank=64, alpha=16.0, targets="all-linear", optimizer="paged-adamw-32bit",
                         device="cuda", padded=False),
}
