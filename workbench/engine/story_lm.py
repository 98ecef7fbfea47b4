"""``story-lm``: the workbench's own small causal language model, made here and shipped.

No package on the registries these machines reach ships a pretrained causal LM's weights,
and a workshop on generative LoRA needs a model that *writes* with no network.  So the
project makes one, deterministically, and ships the result in ``data/story_lm/``:

* a **corpus** of short, simple English stories, written by a small grammar in this module
  (``generate_corpus``) from a few hundred words, seeded with ``random.Random(seed)``: the
  same seed gives the same text on any machine (``corpus_hash`` fingerprints it);
* a **byte-level BPE tokenizer** trained on that corpus with the ``tokenizers`` package
  (``build_tokenizer``): byte-level, so any text a user types into a prompt box
  tokenizes (a word the corpus never had just takes more tokens); wrapped as a
  ``transformers.PreTrainedTokenizerFast``.  GPT-2's convention: one ``<|endoftext|>``
  token is both BOS and EOS and separates documents; ``<|pad|>`` pads;
* a **Llama-architecture** decoder (``model_config``: RMSNorm, rotary positions, SwiGLU,
  tied embeddings), about 1.5 M parameters, so LoRA's module names are the ones people meet
  on real models (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``gate_proj``,
  ``up_proj``, ``down_proj``);
* ``pretrain``: next-token prediction on the packed corpus (AdamW, warm-up then cosine
  decay, fixed seed, deterministic kernels), a few minutes on two CPU cores.

``data/make_story_lm.py`` runs all of it and writes the folder with its model card;
``story_lm_path()`` finds the folder (in a checkout or in an installed wheel), and plain
``transformers`` loads it: ``AutoModelForCausalLM.from_pretrained(story_lm_path())``.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from workbench.engine.bundled import bundled_data_dir

__all__ = [
    "STORY_LM", "EOS", "PAD", "ANIMALS", "PEOPLE", "NAMES", "OPPOSITES", "COLORS", "SIZES",
    "story", "generate_corpus", "corpus_hash", "build_tokenizer", "model_config", "PretrainConfig",
    "pack", "batches", "pretrain", "perplexity", "story_lm_path", "load_story_lm", "noun_phrase",
]

#: The shipped folder's name, under the bundled data folder.
STORY_LM = "story_lm"
#: Document separator, BOS and EOS at once (GPT-2's convention), and the padding token.
EOS = "<|endoftext|>"
PAD = "<|pad|>"

# ---------------------------------------------------------------- the grammar's words
# Few enough that a 1.5 M-parameter model learns them all, many enough that sentences vary
# (and that a held-out split by combination is possible).

ANIMALS = (
    "cat", "dog", "fox", "bird", "rabbit", "frog", "duck", "horse", "cow", "pig", "sheep", "goat",
    "mouse", "bear", "owl", "fish", "turtle", "lion", "tiger", "monkey", "squirrel", "hen",
    "puppy", "kitten", "pony", "deer", "wolf", "snail", "bee", "goose",
)
PEOPLE = (
    "boy", "girl", "farmer", "teacher", "baker", "king", "queen", "doctor", "child", "man",
    "woman", "sailor", "painter", "cook", "friend", "grandma", "grandpa", "pilot",
)
NAMES = (
    "Tom", "Mia", "Sam", "Lily", "Ben", "Anna", "Max", "Zoe", "Leo", "Emma", "Jack", "Rosa",
    "Finn", "Nora", "Omar", "Ella", "Kai", "Lucy", "Noah", "Ruby",
)
#: Adjective pairs: the corpus states both sides ("... was cold, but now it is hot."), so a
#: model can learn which word is the other's opposite.
OPPOSITES = (
    ("happy", "sad"), ("hot", "cold"), ("fast", "slow"), ("old", "young"), ("tall", "short"),
    ("hungry", "full"), ("loud", "quiet"), ("clean", "dirty"), ("wet", "dry"), ("kind", "mean"),
    ("brave", "scared"), ("strong", "weak"), ("soft", "hard"), ("light", "heavy"), ("rich", "poor"),
    ("awake", "asleep"), ("busy", "bored"), ("early", "late"),
)
FEELINGS = tuple(w for pair in OPPOSITES for w in pair)
OPPOSITE = {a: b for pair in OPPOSITES for a, b in (pair, pair[::-1])}
COLORS = ("red", "blue", "green", "yellow", "brown", "white", "black", "pink", "gray", "orange")
SIZES = ("big", "little", "tiny", "small", "fat", "thin")
PLACES = (
    "park", "garden", "river", "forest", "house", "school", "farm", "beach", "hill", "lake",
    "town", "field", "kitchen", "barn", "pond", "market", "castle", "cave",
)
THINGS = (
    "ball", "apple", "cake", "book", "box", "hat", "kite", "boat", "flower", "cookie", "drum",
    "bell", "cup", "stick", "leaf", "shell", "carrot", "map", "key", "sock", "star", "rock",
)
FOODS = ("apple", "cake", "cookie", "carrot", "pie", "bread", "soup", "cheese", "egg", "pear")
#: (present 3rd person, past) of verbs that take an object.
VERBS_OBJ = (
    ("finds", "found"), ("sees", "saw"), ("likes", "liked"), ("takes", "took"), ("makes", "made"),
    ("wants", "wanted"), ("holds", "held"), ("loses", "lost"), ("drops", "dropped"), ("paints", "painted"),
    ("carries", "carried"), ("hides", "hid"), ("kicks", "kicked"), ("washes", "washed"),
)
#: (present 3rd person, past) of verbs that take no object.
VERBS_INTRANS = (
    ("runs", "ran"), ("jumps", "jumped"), ("sings", "sang"), ("sleeps", "slept"), ("swims", "swam"),
    ("plays", "played"), ("walks", "walked"), ("dances", "danced"), ("laughs", "laughed"),
    ("waits", "waited"), ("sits", "sat"), ("hops", "hopped"),
)
TIMES = (
    "One day", "In the morning", "At night", "After lunch", "Last summer", "On Sunday",
    "Long ago", "In the winter", "That evening", "Yesterday",
)
ENDINGS = (
    "The end.", "They were friends after that.", "It was a good day.", "Everyone smiled.",
    "Then they went home.", "What a day it was!",
)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def noun_phrase(rng: random.Random, noun: str | None = None, *, det: str | None = None) -> str:
    """A lower-case noun phrase: "the little red fox", "a cat", "Tom's dog", "Mia".

    Names stand alone; otherwise a determiner, an optional size and an optional colour
    (animals only) come before the noun, so the phrase has 1 to 4 words.
    """
    if noun is None:
        r = rng.random()
        if r < 0.25:
            return rng.choice(NAMES)
        noun = rng.choice(ANIMALS) if r < 0.8 else rng.choice(PEOPLE)
    if det is None:
        det = rng.choices(["the", "a", "my", "his", "her", "NAME's"], weights=[6, 2, 1, 1, 1, 1])[0]
        if det == "NAME's":
            det = rng.choice(NAMES) + "'s"
    words = [det]
    if rng.random() < 0.35:
        words.append(rng.choice(SIZES))
    if noun in ANIMALS and rng.random() < 0.3:
        words.append(rng.choice(COLORS))
    words.append(noun)
    phrase = " ".join(words)
    if det == "a" and words[1][0] in "aeiou":
        phrase = "an" + phrase[1:]
    return phrase


def _subject(phrase: str) -> str:
    """The phrase as a sentence's first words (capitalised unless it starts with a name)."""
    return _cap(phrase)


def _definite(phrase: str) -> str:
    """The same thing mentioned again: "a little fox" -> "the little fox"."""
    for det in ("an ", "a "):
        if phrase.startswith(det):
            return "the " + phrase[len(det):]
    return phrase


def _indefinite(phrase: str) -> str:
    """First mention after "There was": "the little fox" -> "a little fox"."""
    if phrase.startswith("the "):
        rest = phrase[4:]
        return ("an " if rest[0] in "aeiou" else "a ") + rest
    return phrase


def story(rng: random.Random) -> str:
    """One short story: a hero, maybe a friend, a place, 4 to 8 sentences.

    The sentence kinds teach what the bundled skill later builds on: states in the
    present and the past ("the fox is hungry", "the fox was hungry"), yes/no questions
    with their answers (so questions are familiar text), opposites stated together
    ("it was cold, but now it is hot"), actions in both tenses, and repetition of the
    same noun phrase.
    """
    hero = noun_phrase(rng)
    friend = noun_phrase(rng, det=rng.choice(["a", "the"]))
    place = rng.choice(PLACES)
    h, f = _definite(hero), _definite(friend)
    out: list[str] = []
    opening = rng.randrange(3) if hero[0].islower() else rng.randrange(2)
    if opening == 0:
        out.append(f"{rng.choice(TIMES)}, {hero} went to the {place}.")
    elif opening == 1:
        out.append(f"{_subject(hero)} lived near the {place}.")
    else:
        out.append(f"There was {_indefinite(hero)} in the {place}.")
    for _ in range(rng.randint(3, 7)):
        who = h if rng.random() < 0.7 else f
        adj, opp = rng.choice(OPPOSITES) if rng.random() < 0.5 else rng.choice(OPPOSITES)[::-1]
        kind = rng.randrange(10)
        if kind == 0:
            out.append(f"{_subject(who)} is {adj}.")
        elif kind == 1:
            out.append(f"{_subject(who)} was {adj}.")
        elif kind == 2:
            asker = h if who == f else f
            yes = rng.random() < 0.5
            answer = f"Yes, {who} is {adj}." if yes else f"No, {who} is {opp}."
            out.append(f'{_subject(asker)} asked, "Is {who} {adj}?" "{answer}"')
        elif kind == 3:
            out.append(f"{_subject(who)} was {adj}, but now {who} is {opp}.")
        elif kind == 4:
            out.append(f"{_subject(who)} is not {adj}. {_subject(who)} is {opp}.")
        elif kind == 5:
            pres, past = rng.choice(VERBS_OBJ)
            thing = rng.choice(THINGS)
            art = "an" if thing[0] in "aeiou" else "a"
            out.append(f"{_subject(who)} {past} {art} {thing}." if rng.random() < 0.6
                       else f"Every day, {who} {pres} {art} {thing}.")
        elif kind == 6:
            pres, past = rng.choice(VERBS_INTRANS)
            out.append(f"{_subject(who)} {past} in the {place}." if rng.random() < 0.6
                       else f"{_subject(who)} {pres} in the {place} every day.")
        elif kind == 7:
            food = rng.choice(FOODS)
            art = "an" if food[0] in "aeiou" else "a"
            out.append(f"{_subject(h)} gave {f} {art} {food}. Now {f} is {rng.choice(['happy', 'full'])}.")
        elif kind == 8:
            out.append(f"Was {who} {adj}? Yes, {who} was very {adj}.")
        else:
            out.append(f"{_subject(h)} and {f} played in the {place}.")
    if rng.random() < 0.5:
        out.append(rng.choice(ENDINGS))
    return " ".join(out)


def generate_corpus(n_stories: int, seed: int) -> list[str]:
    """``n_stories`` stories from ``random.Random(seed)``: the same seed, the same text."""
    if n_stories < 1:
        raise ValueError(f"n_stories must be a positive number of stories, got {n_stories}")
    rng = random.Random(seed)
    return [story(rng) for _ in range(n_stories)]


def corpus_hash(texts: Sequence[str]) -> str:
    """SHA-256 of the stories joined by newlines: a fingerprint recorded next to the weights."""
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- tokenizer


def build_tokenizer(texts: Sequence[str], vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on ``texts``, as a ``PreTrainedTokenizerFast``.

    Byte-level (GPT-2's scheme): the 256 byte symbols are in the vocabulary from the start,
    so every string, in any script, encodes and decodes back to itself; BPE merges then make
    the corpus's words single tokens.  ``<|endoftext|>`` is BOS and EOS, ``<|pad|>`` pads;
    nothing is added automatically around a text (as with GPT-2), so ``prompt + completion``
    tokenizes the same as the two parts joined.  Training is single-threaded so ties between
    equally frequent pairs always break the same way.
    """
    import os

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be at least 300 (256 bytes, 2 special tokens, some merges), got {vocab_size}")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    # Left padding: a batch of prompts for generation then ends every prompt at the last position.
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD,
                                   clean_up_tokenization_spaces=False, padding_side="left")


# ---------------------------------------------------------------- model


def model_config(tokenizer, *, hidden: int = 128, layers: int = 4, heads: int = 4, intermediate: int = 384,
                 context: int = 256):
    """The Llama configuration of story-lm (tied input and output embeddings, as small LMs do)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=context, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=True, attention_dropout=0.0, initializer_range=0.02,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


@dataclass(frozen=True)
class PretrainConfig:
    """The pretraining recipe: AdamW, linear warm-up then cosine decay to ``min_lr_ratio``.

    lr(t) = lr * t / warmup                                    for t < warmup
    lr(t) = lr * (m + (1 - m) * (1 + cos(pi * p)) / 2),  p = (t - warmup) / (steps - warmup)
    """

    steps: int = 700
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 2e-3
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    bf16: bool = True

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        p = (step - self.warmup) / max(1, self.steps - self.warmup)
        m = self.min_lr_ratio
        return self.lr * (m + (1 - m) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))

    def to_dict(self) -> dict:
        return asdict(self)


def pack(texts: Sequence[str], tokenizer) -> torch.Tensor:
    """One long 1-D stream of token ids: each story followed by EOS (documents packed, no padding)."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for enc in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def batches(stream: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """A batch of ``batch_size`` windows of ``seq_len`` tokens at random offsets of the stream."""
    if stream.numel() <= seq_len:
        raise ValueError(f"the token stream ({stream.numel()} tokens) is shorter than one window of {seq_len}")
    starts = torch.randint(0, stream.numel() - seq_len, (batch_size,), generator=generator)
    return torch.stack([stream[s:s + seq_len] for s in starts.tolist()])


def pretrain(model, stream: torch.Tensor, cfg: PretrainConfig,
             on_step: Callable[[int, float, float], None] | None = None) -> list[float]:
    """Next-token pretraining of ``model`` on ``stream``, in place; returns the loss per step.

    Deterministic for a given seed on a given machine: windows are drawn from a seeded
    ``torch.Generator``, dropout is off in the config, and deterministic kernels are asked
    for.  bf16 autocast (weights and optimizer state stay fp32) roughly halves a CPU step
    where the CPU has bf16 matmul units.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    was_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    model.train()
    losses: list[float] = []
    try:
        for step in range(cfg.steps):
            lr = cfg.lr_at(step)
            for g in opt.param_groups:
                g["lr"] = lr
            x = batches(stream, cfg.batch_size, cfg.seq_len, gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                out = model(input_ids=x, labels=x)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(float(out.loss.detach()))
            if on_step is not None:
                on_step(step, losses[-1], lr)
    finally:
        torch.use_deterministic_algorithms(was_det)
        model.eval()
    return losses


@torch.no_grad()
def perplexity(model, stream: torch.Tensor, seq_len: int = 128) -> float:
    """exp(mean next-token loss) over consecutive windows of the stream, in fp32.

    Windows do not overlap; the last partial window is dropped.  Every window predicts
    ``seq_len - 1`` tokens, so the mean is over ``n_windows * (seq_len - 1)`` tokens.
    """
    n = stream.numel() // seq_len
    if n == 0:
        raise ValueError(f"the text has {stream.numel()} tokens, fewer than one window of {seq_len}")
    x = stream[: n * seq_len].view(n, seq_len)
    model.eval()
    total = 0.0
    for chunk in x.split(32):
        total += float(model(input_ids=chunk, labels=chunk).loss) * chunk.shape[0]
    return math.exp(total / n)


# ---------------------------------------------------------------- the shipped folder


def story_lm_path() -> str:
    """Folder of the shipped story-lm (``<bundled data>/story_lm``), loadable by plain ``transformers``."""
    return str(Path(bundled_data_dir()) / STORY_LM)


def load_story_lm(path: str | None = None):
    """``(model, tokenizer)`` of the shipped story-lm, in eval mode, with left padding for generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path or story_lm_path())
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"story-lm weights not found in {folder}; build them with: python data/make_story_lm.py")
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    model.eval()
    return model, tok

