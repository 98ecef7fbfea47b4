"""Write the bundled generative task, ``data/skill/``: turn a statement into a question.

    python data/make_skill.py

    prompt:     "Statement: The little fox is hungry.\\nQuestion:"
    completion: " Is the little fox hungry?"

The rule (English subject-auxiliary inversion): move "is"/"was" to the front, give it the
capital letter, lower-case the old first word unless it is a name, and end with "?".
story-lm has read every word and many yes/no questions during pretraining, but never a
"Statement: ... Question:" pair, so the base model cannot do it; a short LoRA run learns it.

Held out by combination: each (noun, adjective) pair (a name counts as a noun) belongs to
training or to validation, never both, so every validation prompt pairs a subject with an
adjective in a way training never showed (the words themselves all occur in training).
See ``data/README.md`` (section ``skill``) for the datasheet.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.engine.story_lm import ANIMALS, FEELINGS, NAMES, PEOPLE, noun_phrase  # noqa: E402
from workbench.util.fileio import atomic_write_json, atomic_write_text  # noqa: E402

SEED = 0
N_TRAIN = 2000
N_VALIDATION = 200
VALIDATION_SHARE = 0.2  # of the (noun, adjective) pairs
TASK = "statement_to_question"
INSTRUCTION = "Statement: {statement}\nQuestion:"


def pair_split(rng: random.Random) -> tuple[set, set]:
    """Every (noun, adjective) pair, shuffled, cut into training and validation pairs."""
    pairs = [(n, a) for n in ANIMALS + PEOPLE + NAMES for a in FEELINGS]
    rng.shuffle(pairs)
    k = round(len(pairs) * VALIDATION_SHARE)
    return set(pairs[k:]), set(pairs[:k])


def example(rng: random.Random, noun: str, adj: str) -> dict:
    """One prompt/completion pair about ``noun`` being ``adj`` (present or past, maybe "very")."""
    phrase = noun if noun in NAMES else noun_phrase(rng, noun)
    aux = rng.choice(["is", "was"])
    very = "very " if rng.random() < 0.2 else ""
    statement = f"{phrase[:1].upper() + phrase[1:]} {aux} {very}{adj}."
    question = f"{aux.capitalize()} {phrase} {very}{adj}?"
    return {"prompt": INSTRUCTION.format(statement=statement), "completion": " " + question}


def rows(rng: random.Random, pairs: set, n: int, avoid: set[str] = frozenset()) -> list[dict]:
    """``n`` examples with distinct prompts, each from a pair drawn from ``pairs``."""
    ordered = sorted(pairs)
    out, seen = [], set(avoid)
    while len(out) < n:
        ex = example(rng, *rng.choice(ordered))
        if ex["prompt"] not in seen:
            seen.add(ex["prompt"])
            out.append(ex)
    return out


def build(seed: int = SEED) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    train_pairs, val_pairs = pair_split(rng)
    validation = rows(rng, val_pairs, N_VALIDATION)
    train = rows(rng, train_pairs, N_TRAIN, avoid={r["prompt"] for r in validation})
    return {"train": train, "validation": validation}


def main() -> int:
    out = ROOT / "data" / "skill"
    out.mkdir(parents=True, exist_ok=True)
    splits = build()
    for name, rs in splits.items():
        atomic_write_text(out / f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs))
    atomic_write_json(out / "task.json", {
        "task": TASK, "seed": SEED, "prompt_format": INSTRUCTION, "sizes": {k: len(v) for k, v in splits.items()},
        "validation_share_of_pairs": VALIDATION_SHARE, "metric": "exact match of the greedy completion "
        "(stopped at EOS or a newline, stripped) with the completion (stripped)",
        "heldout_text": "../story_lm/heldout.txt",
    })
    print({k: len(v) for k, v in splits.items()}, "->", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
