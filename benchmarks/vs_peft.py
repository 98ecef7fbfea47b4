"""Our LoRA layers against PEFT's: the same model, batches and settings, interleaved.

    python benchmarks/vs_peft.py [--steps 20] [--repeats 7] [--targets query,value] [--rank 8] [--device auto]

Prints one table: step time (median of interleaved repeats) and its ratio ours/PEFT
(target: at most 1.0), whether the loss curves over ``--steps`` steps are identical with
dropout off, and the memory of each (exact tensor accounting).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import workbench as wb  # noqa: E402
from workbench.engine.timing import interleaved_timings  # noqa: E402
from workbench.engine.data import load_texts  # noqa: E402
from workbench.engine.hardware import resolve_device  # noqa: E402
from workbench.engine.memory import SavedActivations, gradient_bytes, optimizer_state_bytes, parameter_bytes  # noqa: E402
from workbench.util.units import format_bytes  # noqa: E402


def batches(tokenizer, n: int, batch_size: int, max_length: int, device: torch.device):
    ds = load_texts("default", "train")
    out = []
    for i in range(n):
        texts = ds.texts[i * batch_size:(i + 1) * batch_size]
        enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        enc["labels"] = torch.tensor(ds.labels[i * batch_size:(i + 1) * batch_size])
        out.append({k: v.to(device) for k, v in enc.items()})
    return out


def make_models(args):
    from peft import LoraConfig, get_peft_model

    base, tok = wb.load_base("minilm", num_labels=2)
    for m in base.modules():  # dropout off everywhere: both runs must be deterministic and identical
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    targets = args.targets.split(",")
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=args.rank, lora_alpha=2 * args.rank,
                                                                target_modules=targets, task_type="SEQ_CLS"))
    ours = copy.deepcopy(base)
    wb.add_lora(ours, rank=args.rank, alpha=2 * args.rank, targets=targets)
    with torch.no_grad():  # the same starting A (B is zero in both)
        for name, layer in wb.lora_layers(ours).items():
            layer.lora_A.weight.copy_(peft_model.base_model.model.get_submodule(name).lora_A["default"].weight)
    return ours.train().to(args.device), peft_model.train().to(args.device), tok


def step_fn(model, data, use_bf16: bool):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    state = {"i": 0}

    def step():
        batch = data[state["i"] % len(data)]
        state["i"] += 1
        device_type = next(model.parameters()).device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach().item()

    return step, opt


def memory_of(model, opt, batch) -> dict:
    with SavedActivations(model) as saved:
        loss = model(**batch).loss
    loss.backward()
    grads = gradient_bytes(model)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {"params": parameter_bytes(model), "grads": grads, "optimizer": optimizer_state_bytes(opt),
            "activations": saved.bytes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="steps of the loss-curve comparison")
    p.add_argument("--repeats", type=int, default=7, help="interleaved timing repeats")
    p.add_argument("--targets", default="query,value")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for both")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu' or 'cuda'")
    args = p.parse_args(argv)
    args.device = resolve_device(args.device)
    torch.manual_seed(0)
    ours, theirs, tok = make_models(args)
    data = batches(tok, max(args.steps, 4), args.batch_size, args.max_length, args.device)

    # 1. identical loss curves (dropout off, same init, same batches)
    step_ours, _ = step_fn(ours, data, args.bf16)
    step_theirs, _ = step_fn(theirs, data, args.bf16)
    curve_ours = [step_ours() for _ in range(args.steps)]
    curve_theirs = [step_theirs() for _ in range(args.steps)]
    max_diff = max(abs(a - b) for a, b in zip(curve_ours, curve_theirs))

    # 2. step time, interleaved
    ours_t, theirs_t, _ = make_models(args)
    s_ours, opt_ours = step_fn(ours_t, data, args.bf16)
    s_theirs, opt_theirs = step_fn(theirs_t, data, args.bf16)
    sync = (lambda: torch.cuda.synchronize(args.device)) if args.device.type == "cuda" else None
    table = interleaved_timings({"ours": s_ours, "PEFT": s_theirs}, repeats=args.repeats, warmup=2, sync=sync)

    # 3. memory
    mem_ours = memory_of(ours_t, opt_ours, data[0])
    mem_theirs = memory_of(theirs_t, opt_theirs, data[0])

    where = (torch.cuda.get_device_name(args.device) if args.device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    print(f"MiniLM, LoRA r={args.rank} on {args.targets}, batch {args.batch_size} x {args.max_length} tokens, "
          f"{where}, bf16={'on' if args.bf16 else 'off'}, dropout off")
    print(f"loss curves over {args.steps} steps: max |ours - PEFT| = {max_diff:.3g}"
          f" ({'identical' if max_diff == 0 else 'differ'})")
    print()
    print("| | step ms (median) | min | max | ratio to ours | params | grads | AdamW state | saved activations |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (_, row), mem in zip(table.iterrows(), (mem_ours, mem_theirs)):
        print(f"| {row['name']} | {row['median_ms']:.0f} | {row['min_ms']:.0f} | {row['max_ms']:.0f} | {row['ratio']:.3f} | "
              + " | ".join(format_bytes(mem[k]) for k in ("params", "grads", "optimizer", "activations")) + " |")
    ratio = table.loc[0, "median_ms"] / table.loc[1, "median_ms"]
    print(f"\nstep-time ratio ours/PEFT = {ratio:.3f} (target <= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
