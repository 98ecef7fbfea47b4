"""The state an optimizer keeps per trainable number, torch's and bitsandbytes' alike.

Counted exactly on a real optimizer by ``optimizer_state_bytes``; estimated here, from
the trainable tensors' sizes alone, by ``optimizer_state_estimate`` (``OPTIMIZERS`` says
what each one keeps).
"""

from __future__ import annotations

from typing import Iterable

from workbench.util.checks import check_choice
from workbench.util.units import FLOAT32_BYTES

OPTIMIZER_STATES: dict[str, int] = {  # trainable-sized state tensors per parameter
    "adamw": 2,
    "adam": 2,
    "sgd": 0,
    "sgd-momentum": 1,
}
STEP_COUNTER_BYTES = FLOAT32_BYTES  # Adam/AdamW keep `step` as a float32 0-dim tensor per parameter

# bitsandbytes' optimizers (Dettmers et al. 2022, "8-bit Optimizers via Block-wise
# Quantization", arXiv:2110.02861), as bitsandbytes 0.50 allocates their state:
BNB_8BIT_BLOCK = 256  # numbers per float32 absmax of an 8-bit state
BNB_MIN_8BIT_SIZE = 4096  # smaller tensors keep 32-bit states (bitsandbytes' min_8bit_size)
BNB_QMAP_BYTES = 2 * 256 * FLOAT32_BYTES  # the two 256-entry float32 quantile maps, shared by all tensors

#: Every optimizer the estimate knows, and what its state is.
OPTIMIZERS: dict[str, str] = {
    "adamw": "torch.optim.AdamW: exp_avg and exp_avg_sq in the parameter's dtype (2 x s bytes per number) "
             "and a float32 step counter per tensor",
    "adam": "torch.optim.Adam: as adamw",
    "sgd": "torch.optim.SGD without momentum: no state",
    "sgd-momentum": "torch.optim.SGD with momentum: one buffer in the parameter's dtype (s bytes per number)",
    "adamw-32bit": "bitsandbytes AdamW32bit: both moments in float32 (8 bytes per number) whatever the "
                   "parameter's dtype, as mixed-precision training keeps them",
    "adamw-8bit": f"bitsandbytes AdamW8bit: both moments as 8-bit codes (2 bytes per number) plus one float32 "
                  f"absmax per {BNB_8BIT_BLOCK} numbers for each moment; tensors under {BNB_MIN_8BIT_SIZE} numbers "
                  f"keep float32 moments; two 256-entry float32 quantile maps ({BNB_QMAP_BYTES} bytes) per optimizer",
    "paged-adamw-32bit": "bitsandbytes PagedAdamW32bit: the bytes of adamw-32bit; on CUDA, state tensors of "
                         "100,000 numbers or more live in paged (unified) memory, which the driver moves to CPU "
                         "memory when the GPU runs short (counted here on the GPU, as the memory it uses when "
                         "nothing is evicted)",
    "paged-adamw-8bit": "bitsandbytes PagedAdamW8bit: the bytes of adamw-8bit, paged as paged-adamw-32bit",
}


def optimizer_state_estimate(optimizer: str, numels: Iterable[int], bytes_per_element: int) -> int:
    """Bytes of optimizer state for trainable tensors of ``numels`` numbers (see ``OPTIMIZERS``).

    torch: k * n * s per tensor (k = 2 for Adam/AdamW, 1 for SGD with momentum, 0 for SGD)
    + 4 bytes of float32 ``step`` per tensor for Adam/AdamW.  bitsandbytes 32-bit: 8 n.
    bitsandbytes 8-bit: 2 n + 2 * 4 * ceil(n / 256) for n >= 4096 (else 8 n), plus 2048
    bytes of quantile maps once.  bitsandbytes keeps ``step`` as a Python int: no tensor.
    """
    check_choice("optimizer", optimizer, tuple(OPTIMIZERS))
    numels = [int(n) for n in numels]
    if optimizer in OPTIMIZER_STATES:
        k = OPTIMIZER_STATES[optimizer]
        step = STEP_COUNTER_BYTES * len(numels) if optimizer in ("adam", "adamw") else 0
        return k * sum(numels) * bytes_per_element + step
    if optimizer.endswith("32bit"):
        return 2 * FLOAT32_BYTES * sum(numels)
    small = [n for n in numels if n < BNB_MIN_8BIT_SIZE]
    big = [n for n in numels if n >= BNB_MIN_8BIT_SIZE]
    blocks = sum(-(-n // BNB_8BIT_BLOCK) for n in big)
    # two moments: float32 for small tensors; 8-bit codes and a float32 absmax per block for the others
    return (2 * FLOAT32_BYTES * sum(small) + 2 * sum(big) + 2 * FLOAT32_BYTES * blocks
            + (BNB_QMAP_BYTES if big else 0))

# Tensors of the intermediate size that an activation function saves for backward,
# as labels: "in" (its input), "out" (its output, which the next linear layer may also
