"""Generate the bundled task "who_acts": who did it, the person or the animal?

Every sentence tells of one person and one animal and one action between them, e.g.

    "On the beach, a curious goat followed the old fisherman."      -> animal_acts (0)
    "On the beach, the old fisherman followed a curious goat."      -> person_acts (1)
    "The old fisherman was followed by a curious goat on the beach." -> animal_acts (0)

The label says who performs the action. Both labels use exactly the same words in the
same proportions, so a "bag of meaning" (which nouns, which verb, which place) carries
no information about the label: only word order and grammatical voice do. That is what
a frozen sentence encoder blurs and what fine-tuning (full or LoRA) can learn quickly.

Run ``python data/make_task.py`` to regenerate ``data/who_acts/`` byte for byte
(the generator uses only a seeded ``random.Random`` and the word lists below), or
``python data/make_task.py --out DIR`` to write the files elsewhere.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TASK_NAME = "who_acts"
LABEL_NAMES = ["animal_acts", "person_acts"]  # label 0, label 1
SEED = 1234
SIZES = {"train": 3000, "validation": 600, "test": 600}

# One person, one animal; each may carry an adjective.
PEOPLE = [
    "farmer", "fisherman", "mail carrier", "teacher", "nurse", "tourist", "chef",
    "boy", "girl", "grandmother", "grandfather", "jogger", "police officer", "neighbour",
    "photographer", "student", "baker", "shepherd", "gardener", "firefighter", "doctor",
    "painter", "cyclist", "hiker", "zookeeper", "vet", "pilot", "singer", "waiter",
    "librarian", "ranger", "sailor", "child", "woman", "man", "plumber", "dentist",
    "professor", "soldier", "lifeguard",
]
PERSON_ADJECTIVES = [
    "", "", "", "old", "young", "tired", "tall", "nervous", "cheerful", "sleepy",
    "grumpy", "friendly", "elderly", "little", "busy", "brave", "careless", "quiet",
]
ANIMALS = [
    "dog", "goat", "cat", "goose", "horse", "fox", "raccoon", "squirrel", "parrot", "cow",
    "pig", "donkey", "monkey", "bear", "duck", "rooster", "swan", "llama", "crow",
    "seagull", "rabbit", "sheep", "deer", "badger", "owl", "turkey", "hedgehog", "kitten",
    "puppy", "pony", "camel", "ostrich", "lizard", "wolf", "mouse", "pigeon", "ferret",
    "otter", "moose", "beaver",
]
ANIMAL_ADJECTIVES = [
    "", "", "", "stray", "angry", "small", "brown", "noisy", "curious", "huge", "hungry",
    "white", "spotted", "wild", "frightened", "playful", "lazy", "muddy", "black",
]
# (past tense, past participle): actions that read naturally in both directions.
VERBS = [
    ("chased", "chased"), ("followed", "followed"), ("startled", "startled"),
    ("watched", "watched"), ("surprised", "surprised"), ("ignored", "ignored"),
    ("spotted", "spotted"), ("frightened", "frightened"), ("pushed", "pushed"),
    ("nudged", "nudged"), ("bit", "bitten"), ("kicked", "kicked"), ("scared", "scared"),
    ("woke", "woken"), ("greeted", "greeted"), ("approached", "approached"),
    ("tracked", "tracked"), ("avoided", "avoided"), ("stalked", "stalked"),
    ("hugged", "hugged"), ("licked", "licked"), ("bumped into", "bumped into"),
    ("stared at", "stared at"), ("ran after", "run after"), ("crept up on", "crept up on"),
    ("found", "found"), ("fed", "fed"), ("teased", "teased"), ("annoyed", "annoyed"),
    ("rescued", "rescued"),
]
DETERMINERS = ["the", "the", "a", "that", "this"]
PLACES = [
    "in the garden", "on the beach", "near the river", "at the market",
    "in the park", "behind the barn", "on the hill", "at the zoo", "in the yard",
    "by the lake", "on the farm", "in the forest", "outside the bakery", "on the bridge",
    "in the village square", "at the campsite",
]
TIMES = [
    "Yesterday", "This morning", "Last night", "On Sunday", "At dawn",
    "Late in the afternoon", "Once again", "Earlier today", "Last summer", "Every evening",
]
ENDINGS = [
    " without warning", " for a while", " all afternoon", " again",
    " twice", " for no reason", " quietly",
]
AFTERTHOUGHTS = [
    " Nobody saw it coming.", " Everyone laughed.", " It happened fast.",
    " The crowd watched.", " It was quite a sight.",
]


# Share of each construction: in the passive the agent comes last ("... was chased by X").
VOICES = {"active": 0.6, "passive": 0.4}
FILLER_RATES = {"time": 0.2, "place": 0.25, "ending": 0.15, "after": 0.1}


def _noun_phrase(rng: random.Random, noun: str, adjectives: list[str]) -> str:
    adj = rng.choice(adjectives)
    det = rng.choice(DETERMINERS)
    words = [det, adj, noun] if adj else [det, noun]
    phrase = " ".join(words)
    if det == "a" and phrase[2] in "aeiou":
        phrase = "an" + phrase[1:]
    return phrase


def _sentence(rng: random.Random, agent: str, patient: str, voice: str) -> str:
    """One sentence where ``agent`` performs a verb on ``patient``, in the given voice."""
    past, participle = rng.choice(VERBS)
    # Most sentences are bare; some carry a time, a place, a manner or a second sentence.
    place = rng.choice(PLACES) if rng.random() < FILLER_RATES["place"] else ""
    time = rng.choice(TIMES) if rng.random() < FILLER_RATES["time"] else ""
    ending = rng.choice(ENDINGS) if rng.random() < FILLER_RATES["ending"] else ""
    afterthought = rng.choice(AFTERTHOUGHTS) if rng.random() < FILLER_RATES["after"] else ""
    if voice == "active":
        core = f"{agent} {past} {patient}{ending}"
    elif voice == "passive":
        core = f"{patient} was {participle} by {agent}{ending}"
    else:
        raise ValueError(f"unknown voice {voice!r}")
    if place:
        core = f"{core} {place}"
    if time:
        core = f"{time}, {core}"
    text = core[0].upper() + core[1:] + "." + afterthought
    return text


def _plan(n: int, rng: random.Random) -> list[tuple[int, str]]:
    """(label, voice) for ``n`` examples: each label n/2 times, and within each label the
    passive exactly ``VOICES["passive"]`` of the time, so neither the label nor the voice
    can be guessed from the other. Shuffled."""
    if n % 2:
        raise ValueError(f"split sizes must be even (two balanced labels), not {n}")
    n_passive = round(VOICES["passive"] * n / 2)
    plan = [(label, "passive" if i < n_passive else "active")
            for label in (0, 1) for i in range(n // 2)]
    rng.shuffle(plan)
    return plan


def generate(seed: int = SEED, sizes: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """Build every split as a list of ``{"text": str, "label": int}``.

    Labels are exactly balanced and so is the voice within each label (``_plan``); a text
    never repeats, within or across splits.
    """
    sizes = dict(SIZES if sizes is None else sizes)
    rng = random.Random(seed)
    seen: set[str] = set()
    out: dict[str, list[dict]] = {}
    for split, n in sizes.items():
        rows = []
        for label, voice in _plan(n, rng):
            while True:  # draw again on the rare exact repeat of an earlier text
                person = _noun_phrase(rng, rng.choice(PEOPLE), PERSON_ADJECTIVES)
                animal = _noun_phrase(rng, rng.choice(ANIMALS), ANIMAL_ADJECTIVES)
                agent, patient = (person, animal) if label == 1 else (animal, person)
                text = _sentence(rng, agent, patient, voice)
                if text not in seen:
                    seen.add(text)
                    break
            rows.append({"text": text, "label": label})
        out[split] = rows
    return out


def write_task(out_dir: str | Path, seed: int = SEED) -> Path:
    """Write ``<out_dir>/{train,validation,test}.jsonl`` and ``labels.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in generate(seed).items():
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (out / f"{split}.jsonl").write_text(lines, encoding="utf-8", newline="\n")
    meta = {"task": TASK_NAME, "label_names": LABEL_NAMES, "seed": seed, "sizes": SIZES}
    (out / "labels.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8",
                                     newline="\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / TASK_NAME),
                        help="folder to write the splits into (default: data/who_acts)")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    path = write_task(args.out, args.seed)
    print(f"wrote {TASK_NAME} to {path}")


if __name__ == "__main__":
    main()
