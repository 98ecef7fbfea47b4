"""Build story-lm, the bundled causal language model, into ``data/story_lm/``.

    python data/make_story_lm.py            # about 3 minutes of one CPU core
    python data/make_story_lm.py --out /tmp/story_lm --threads 2
    python data/make_story_lm.py --card-only   # rewrite MODEL_CARD.md from build.json

One torch thread by default: the shipped weights were made so, and a rebuild with one
thread reproduced them byte for byte (more threads may sum in another order and change
the last bits).  On a shared machine one thread is also faster than two that wait on
each other.

Steps, all seeded (see ``workbench/engine/story_lm.py`` for the why of each):
1. the corpus: ``generate_corpus(N_STORIES, CORPUS_SEED)``; its SHA-256 goes into ``build.json``;
2. the byte-level BPE tokenizer, trained on the corpus;
3. a Llama model from ``model_config``, initialised with ``torch.manual_seed(MODEL_SEED)``;
4. ``pretrain`` with the default ``PretrainConfig``;
5. the held-out text: ``generate_corpus(N_HELDOUT, HELDOUT_SEED)``, a different seed of the
   same generator, written to ``heldout.txt`` (one story a line) and scored (perplexity);
6. the folder: weights (safetensors), config, generation config, tokenizer, ``build.json``
   (every number the model card states) and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.engine import story_lm as sl  # noqa: E402
from workbench.util.fileio import atomic_write_json, atomic_write_text  # noqa: E402

N_STORIES = 20_000
CORPUS_SEED = 0
N_HELDOUT = 400
HELDOUT_SEED = 1
MODEL_SEED = 0
VOCAB_SIZE = 1024
PROMPTS = ("One day, the little fox", 'Mia asked, "Is the', "The cat was cold, but now", "There was a")


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for the model card's timing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def generate(model, tok, prompts, *, temperature: float, seed: int = 0, max_new_tokens: int = 40) -> list[str]:
    """Completions of ``prompts`` (greedy at temperature 0, seeded sampling otherwise)."""
    torch.manual_seed(seed)
    enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    kw = dict(do_sample=False) if temperature == 0 else dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, **kw)
    return [tok.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True) for o in out]


def model_card(info: dict, greedy: list[str], sampled: list[str]) -> str:
    m, c, r = info["model"], info["corpus"], info["pretrain"]
    rows = "\n".join(f"| `{p}` | {g.strip()!s} | {s.strip()!s} |".replace("\n", " ") for p, g, s in zip(PROMPTS, greedy, sampled))
    return f"""# story-lm: the workbench's bundled causal language model

A small decoder (Llama architecture) pretrained by this project, on a corpus this project
generates, so that the workbench has a language model that *writes* with no network.
Built by `data/make_story_lm.py` (code in `workbench/engine/story_lm.py`); every number
below comes from `build.json`, written by the same run.

## Architecture
`LlamaForCausalLM`: {m['layers']} layers, hidden size {m['hidden']}, {m['heads']} attention heads (head size
{m['hidden'] // m['heads']}), SwiGLU FFN of {m['intermediate']}, RMSNorm, rotary positions, context {m['context']}
tokens, input and output embeddings tied. **{m['parameters']:,} parameters**
({m['safetensors_bytes'] / 1e6:.1f} MB of fp32 safetensors). LoRA targets by name: `q_proj`, `k_proj`,
`v_proj`, `o_proj` (attention), `gate_proj`, `up_proj`, `down_proj` (FFN).

## Tokenizer
Byte-level BPE (GPT-2's scheme, trained with `tokenizers` on the corpus): {m['vocab_size']} tokens
(256 bytes, the corpus's merges, `<|endoftext|>` = BOS = EOS, `<|pad|>`). Any text
tokenizes; the corpus's words are single tokens. Nothing is added around a text
automatically; padding is on the left (for batched generation).

## Corpus
{c['n_stories']:,} short stories ({c['tokens']:,} tokens, {c['words']:,} words; {c['vocabulary']} distinct words) from
`generate_corpus({c['n_stories']}, seed={c['seed']})`: a grammar of simple English
sentences about animals, people and named children: states ("The fox is hungry."),
the past ("The fox was hungry."), yes/no questions with answers (`Mia asked, "Is the fox
hungry?" "No, the fox is full."`), opposites stated together, actions in both tenses.
SHA-256 of the stories joined by newlines: `{c['sha256']}`.

## Training recipe
Next-token loss on the stories packed into one stream (each followed by `<|endoftext|>`),
windows of {r['seq_len']} tokens at seeded random offsets, batch {r['batch_size']}, {r['steps']} steps
({r['steps'] * r['batch_size'] * r['seq_len']:,} tokens, {r['steps'] * r['batch_size'] * r['seq_len'] / c['tokens']:.1f} passes over the corpus);
AdamW (betas {tuple(r['betas'])}, weight decay {r['weight_decay']} on matrices), lr {r['lr']} with {r['warmup']} warm-up steps
then cosine decay to {r['min_lr_ratio']} x; gradient clipping at {r['grad_clip']}; bf16 autocast
{'on' if r['bf16'] else 'off'} (weights fp32); seed {r['seed']} (model init seed {info['model_seed']}); deterministic kernels.
Final training loss {info['final_loss']:.3f} (mean of the last 20 steps).

**Time:** {info['train_wall_s']:.0f} s wall, {info['train_cpu_s']:.0f} s CPU, {info['threads']} torch thread(s), on
{info['machine']} (a shared machine: the wall time includes other users' load; the CPU
time is the model's own). The whole script: {info['total_wall_s']:.0f} s.{info.get('reproduced', '')}

## Held-out perplexity
`heldout.txt`: {info['heldout']['n_stories']} stories from the same generator with seed {info['heldout']['seed']}
({info['heldout']['tokens']:,} tokens), not seen in training (it measures forgetting after fine-tuning).
Perplexity over windows of {info['heldout']['seq_len']} tokens, fp32: **{info['heldout']['perplexity']:.3f}**
(mean loss {info['heldout']['loss']:.4f} nats per token). The corpus is a grammar with many
random choices (names, words, sentence kinds), so a perplexity well above 1 is its entropy,
not a flaw.

## Sample generations
Greedy (temperature 0) and sampled (temperature 0.8, seed 0), 40 new tokens:

| prompt | greedy | sampled |
|---|---|---|
{rows}

## Intended use and limits
A teaching model: it writes the corpus's kind of text and nothing else, it knows no
facts about the world, and its vocabulary is a few hundred words. It exists so that
LoRA on a *generative* model can be shown end to end, offline, in seconds (the bundled
task `data/skill/`, datasheet in `data/README.md`). Greedy decoding soon repeats itself
(two sentences in a loop), as small language models do; sampling reads more naturally.
Its stories are grammatical but not consistent: an answer need not agree with what the
story said before.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "data" / sl.STORY_LM))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=sl.PretrainConfig.steps)
    ap.add_argument("--card-only", action="store_true", help="rewrite MODEL_CARD.md from build.json, no training")
    args = ap.parse_args(argv)
    if args.card_only:
        info = json.loads((Path(args.out) / "build.json").read_text(encoding="utf-8"))
        atomic_write_text(Path(args.out) / "MODEL_CARD.md", model_card(info, info["samples"]["greedy"], info["samples"]["sampled"]))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    from transformers import LlamaForCausalLM, GenerationConfig

    t_all = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    texts = sl.generate_corpus(N_STORIES, CORPUS_SEED)
    tok = sl.build_tokenizer(texts, VOCAB_SIZE)
    stream = sl.pack(texts, tok)
    cfg = sl.PretrainConfig(steps=args.steps)
    mcfg = sl.model_config(tok)
    torch.manual_seed(MODEL_SEED)
    model = LlamaForCausalLM(mcfg)
    print(f"corpus {len(texts)} stories, {stream.numel()} tokens; model {model.num_parameters():,} parameters", flush=True)

    t0, c0 = time.perf_counter(), time.process_time()

    def report(step: int, loss: float, lr: float) -> None:
        if step % 50 == 0 or step == cfg.steps - 1:
            print(f"step {step:4d} loss {loss:.4f} lr {lr:.2e} {time.perf_counter() - t0:.0f}s", flush=True)

    losses = sl.pretrain(model, stream, cfg, on_step=report)
    train_wall, train_cpu = time.perf_counter() - t0, time.process_time() - c0

    held = sl.generate_corpus(N_HELDOUT, HELDOUT_SEED)
    atomic_write_text(out / "heldout.txt", "\n".join(held) + "\n")
    held_stream = sl.pack(held, tok)
    ppl = sl.perplexity(model, held_stream, cfg.seq_len)

    model.generation_config = GenerationConfig(
        do_sample=False, max_new_tokens=48, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tok.model_max_length = mcfg.max_position_embeddings  # so truncation knows the context
    tok.save_pretrained(out)
    greedy = generate(model, tok, PROMPTS, temperature=0.0)
    sampled = generate(model, tok, PROMPTS, temperature=0.8, seed=0)
    words = [w.strip('.,?!"').lower() for t in texts for w in t.split()]
    info = {
        "corpus": {"n_stories": N_STORIES, "seed": CORPUS_SEED, "sha256": sl.corpus_hash(texts),
                   "tokens": int(stream.numel()), "words": len(words), "vocabulary": len(set(words))},
        "heldout": {"n_stories": N_HELDOUT, "seed": HELDOUT_SEED, "sha256": sl.corpus_hash(held),
                    "tokens": int(held_stream.numel()), "seq_len": cfg.seq_len, "perplexity": ppl,
                    "loss": float(torch.tensor(ppl).log())},
        "model": {"parameters": model.num_parameters(), "hidden": mcfg.hidden_size, "layers": mcfg.num_hidden_layers,
                  "heads": mcfg.num_attention_heads, "intermediate": mcfg.intermediate_size,
                  "context": mcfg.max_position_embeddings, "vocab_size": mcfg.vocab_size,
                  "safetensors_bytes": (out / "model.safetensors").stat().st_size},
        "pretrain": cfg.to_dict(), "model_seed": MODEL_SEED, "vocab_size_asked": VOCAB_SIZE,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]), "losses_every_50": losses[::50],
        "train_wall_s": train_wall, "train_cpu_s": train_cpu, "threads": args.threads,
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "samples": {"prompts": list(PROMPTS), "greedy": greedy, "sampled": sampled},
    }
    info["total_wall_s"] = time.perf_counter() - t_all
    atomic_write_json(out / "build.json", info)
    atomic_write_text(out / "MODEL_CARD.md", model_card(info, greedy, sampled))
    print(f"held-out perplexity {ppl:.3f}; wrote {out} in {info['total_wall_s']:.0f}s")
    for p, g in zip(PROMPTS, greedy):
        print(repr(p), "->", repr(g))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
