"""Generation: a language model answers prompts, and exact match scores the answers.

``generate`` writes each prompt's completion one token at a time:

    t_next = argmax_v  p(v | prompt, t_1 .. t_k)            (temperature 0: greedy)
    t_next ~ softmax(logits / temperature)                   (temperature > 0: sampling)

until the model writes EOS (the token a generative run appends to every completion, so
it is what the model learns to stop with) or ``max_new_tokens`` are written.

Why a loop of our own rather than ``model.generate``: three promises are easier to keep,
and to read, in forty lines than through ``GenerationConfig``'s many settings:

* **Batched equals one by one.**  Prompts are padded on the LEFT (so every row's next
  token is at the last column), padding is masked out, and each row's positions count
  from its own first token (``position_ids = cumsum(mask) - 1``), so a prompt sees the
  same numbers in a batch as alone.  The key/value cache (``cache``, formerly
  ``past_key_values``) means each step feeds one new token per row, not the whole
  sequence again.
* **Seeded sampling that does not depend on anything else.**  Each prompt draws from
  its own ``torch.Generator`` seeded with ``seed``: the same prompt and seed give the
  same completion whatever else is in the batch, whatever ``batch_size`` is, and whatever
  the global RNG did before (it is never touched).  A consequence: the same prompt twice
  in one call gets the same completion; for several samples of a prompt, vary ``seed``.
* **The same function for base, adapted (our LoRA layers) and merged models**: it only
  calls ``model(...)``, so what the layers compute is what is generated.
* **Many adapters, one batch.**  With several named adapters on one base
  (``workbench.lora.serving``), ``adapters=[...]`` names one per prompt; every LoRA layer
  then adds row i's own update to the shared base output, so one forward pass per step
  serves them all, and each row is what its adapter alone would write.

The prompt is tokenized as a generative run tokenizes it for training
(``workbench.engine.sft.prompt_ids``: the tokenizer's BOS first, no EOS after it), so a
model is asked the question in the form it learned.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Sequence

import torch
from torch import nn

from workbench.engine.sft import batch_prompt_ids
from workbench.lora.serving import adapters_per_row, check_row_adapters
from workbench.util.checks import check_integer, check_number, check_positive_int

__all__ = ["generate", "exact_match", "normalize_answer", "position_limit"]


def position_limit(model: nn.Module) -> int | None:
    """How many positions the model can read (GPT-2's ``n_positions``, Llama's
    ``max_position_embeddings``); None when its config does not say."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_causal_lm(model: nn.Module) -> None:
    can = getattr(type(model), "can_generate", None)
    if not (callable(can) and can()) and not type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")):
        raise TypeError(
            f"generate needs a language model with a causal-LM head (e.g. LlamaForCausalLM, GPT2LMHeadModel); "
            f"got a {type(model).__name__}, which does not predict the next token"
        )


def _check_prompts(prompts: str | Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt to answer")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings; prompt {bad[0]} is a {type(prompts[bad[0]]).__name__}")
    return prompts


def _encode(tokenizer: Any, prompts: list[str], chat: bool | Sequence[bool]) -> list[list[int]]:
    flags = [chat] * len(prompts) if isinstance(chat, bool) else list(chat)
    if len(flags) != len(prompts) or not all(isinstance(f, bool) for f in flags):
        raise ValueError(f"chat must be True/False or one bool per prompt ({len(prompts)}), got {chat!r}")
    ids = batch_prompt_ids(tokenizer, prompts, flags)
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise ValueError(f"prompt {empty[0]} is empty and the tokenizer has no BOS token to start from; "
                         "give the model at least one token")
    return ids


def _eos_ids(tokenizer: Any) -> set[int]:
    """The tokenizer's EOS: what a generative run appends to every completion, so what the
    model learns to stop with.  (The model's config may name another id, e.g. a default
    ``LlamaConfig``'s 2, which need not be EOS in this tokenizer's vocabulary.)"""
    eos = getattr(tokenizer, "eos_token_id", None)
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}


def _cache_argument(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """The name of the key/value cache in the model's forward and output (``cache`` since
    transformers 5.2x, ``past_key_values`` before), and ``logits_to_keep=1`` where the model
    takes it (the LM head then runs on the last position only)."""
    params = inspect.signature(type(model).forward).parameters
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    return ("cache" if "cache" in params else "past_key_values"), extra


@torch.no_grad()
def _generate_batch(model: nn.Module, batch: list[list[int]], caps: list[int], pad_id: int, eos: set[int],
                    temperature: float, seed: int) -> list[list[int]]:
    """New token ids for each prompt of ``batch``, at most ``caps[i]`` of them, EOS left out."""
    device = next(model.parameters()).device
    n, width = len(batch), max(len(x) for x in batch)
    ids = torch.full((n, width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((n, width), dtype=torch.long, device=device)
    for i, x in enumerate(batch):  # left padding: every row's last prompt token in the last column
        ids[i, width - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[i, width - len(x):] = 1
    lengths = torch.tensor([len(x) for x in batch], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from its own first token
    gens = [torch.Generator(device=device).manual_seed(seed) for _ in batch] if temperature > 0 else []
    eos_t = torch.tensor(sorted(eos), dtype=torch.long, device=device)
    out: list[list[int]] = [[] for _ in batch]
    done = torch.zeros(n, dtype=torch.bool, device=device)
    step_input, past = ids, None
    cache_arg, extra = _cache_argument(model)
    for step in range(max(caps)):
        result = model(input_ids=step_input, attention_mask=mask, position_ids=positions,
                       use_cache=True, **extra, **{cache_arg: past})
        past, logits = getattr(result, cache_arg), result.logits[:, -1, :].float()
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = torch.stack([torch.multinomial(probs[i], 1, generator=gens[i])[0] for i in range(n)])
        else:
            token = logits.argmax(dim=-1)
        # The per-row bookkeeping on Python lists: indexing the tensors row by row costs one
        # small operation per row and token, more than the model's step for a small model.
        tokens, stops, finished = token.tolist(), torch.isin(token, eos_t).tolist(), done.tolist()
        for i in range(n):
            if not finished[i] and not stops[i]:
                out[i].append(tokens[i])
        done |= torch.tensor([s or len(o) >= c for s, o, c in zip(stops, out, caps)], device=device)
        if bool(done.all()):
            break
        step_input = torch.where(done, torch.full_like(token, pad_id), token)[:, None]
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
        positions = (lengths + step)[:, None]
    return out


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: str | Sequence[str],
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
    chat: bool | Sequence[bool] = False,
    adapters: Sequence[str | None] | None = None,
) -> list[str]:
    """The model's completion of each prompt (the new text only, without the prompt).

    Returns a list in the order of ``prompts``, also for a single string (a list of one),
    so code written for one prompt works for many.  Greedy at ``temperature`` 0; else
    sampled from ``softmax(logits / temperature)`` with a generator per prompt seeded by
    ``seed`` (reproducible, and independent of the global RNG and of the batching).
    Generation of a prompt stops at the tokenizer's EOS (not included in the text) or
    after ``max_new_tokens`` tokens, capped so that prompt + completion fit the model's
    positions (``position_limit``).  Prompts go through in batches of ``batch_size``,
    sorted by length to pad little, left-padded.  ``chat``: the prompts are already
    formatted by a chat template (no BOS is added), one flag for all or one per prompt.
    ``adapters``: one adapter name per prompt (None: the base model alone) of those loaded
    with ``load_adapter(model, folder, name=...)``; a batch then mixes adapters, each row
    through its own (``workbench.lora.serving``), and each completion is what that adapter
    alone writes.  Without it, the model's active adapter answers every prompt.

    The model is put in eval mode while it writes (no dropout), and each of its modules is
    given back in the mode it was in.
    """
    _check_causal_lm(model)
    prompts = _check_prompts(prompts)
    check_positive_int("max_new_tokens", max_new_tokens, what="tokens to write per prompt")
    check_number("temperature", temperature, low=0, what="0 for greedy decoding, > 0 to sample")
    check_integer("seed", seed, 0)
    check_positive_int("batch_size", batch_size, what="prompts per forward pass")
    encoded = _encode(tokenizer, prompts, chat)
    per_row = None if adapters is None else check_row_adapters(model, adapters, len(prompts))
    limit = position_limit(model)
    caps = [max_new_tokens if limit is None else min(max_new_tokens, limit - len(x)) for x in encoded]
    full = [i for i, c in enumerate(caps) if c < 1]
    if full:
        i = full[0]
        raise ValueError(f"prompt {i} has {len(encoded[i])} tokens; the model reads at most {limit} positions, "
                         "so there is no room for an answer: shorten the prompt")
    eos = _eos_ids(tokenizer)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad_id = pad if pad is not None else (min(eos) if eos else 0)  # masked out: its value never matters
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    new_ids: list[list[int]] = [[] for _ in encoded]
    modes = [(m, m.training) for m in model.modules()]  # each module's own mode, given back as it was
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            rows = contextlib.nullcontext() if per_row is None else adapters_per_row(model, [per_row[i] for i in chunk])
            with rows:
                outs = _generate_batch(model, [encoded[i] for i in chunk], [caps[i] for i in chunk], pad_id, eos,
                                       float(temperature), int(seed))
            for i, o in zip(chunk, outs):
                new_ids[i] = o
    finally:
        for m, training in modes:
            m.training = training
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in new_ids]


def normalize_answer(text: str) -> str:
    """The answer part of a completion: leading/trailing whitespace stripped, and only the
    first line kept (a model that answers and then goes on writing still answered)."""
    return text.strip().split("\n", 1)[0].strip()


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The fraction of predictions equal to their reference after ``normalize_answer`` on both.

    Case and inner spaces count ("Paris" is not "paris"): the bundled task has one exact
    answer per prompt.
    """
    predictions, references = answer_pairs("exact_match", predictions, references)
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
    return hits / len(predictions)


def answer_pairs(metric: str, predictions: Sequence[str], references: Sequence[str]) -> tuple[list[str], list[str]]:
    """The checks every answer metric makes first: two lists of strings that pair up one to one."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError(f"{metric} takes lists of strings (predictions, references), not a single string")
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; they pair up one to one")
    if not predictions:
        raise ValueError(f"{metric} of no predictions is undefined: give at least one pair")
    bad = [i for i, (p, r) in enumerate(zip(predictions, references)) if not isinstance(p, str) or not isinstance(r, str)]
    if bad:
        raise TypeError(f"predictions and references must be strings; pair {bad[0]} is not")
    return predictions, references
