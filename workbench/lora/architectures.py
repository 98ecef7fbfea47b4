"""THE table of architectures: what each model family calls the parts of a transformer block.

Every block of a transformer has the same six kinds of weight, whatever a model family
calls them.  A *role* names one of them, so ``targets=("query", "value")`` means the same
thing on BERT, Llama/Qwen2/SmolLM2 and GPT-2:

=================  ==========================  ==========================  ===============
role               BERT (RoBERTa, ...)         Llama, Qwen2, SmolLM2, ...  GPT-2
=================  ==========================  ==========================  ===============
query              attention.self.query        self_attn.q_proj            attn.c_attn (*)
key                attention.self.key          self_attn.k_proj            attn.c_attn (*)
value              attention.self.value        self_attn.v_proj            attn.c_attn (*)
attention output   attention.output.dense      self_attn.o_proj            attn.c_proj
FFN in             intermediate.dense          mlp.gate_proj, mlp.up_proj  mlp.c_fc
FFN out            output.dense (in a block)   mlp.down_proj               mlp.c_proj
=================  ==========================  ==========================  ===============

(*) GPT-2 computes query, key and value with one fused layer (``c_attn``).

This module is the one home of those facts (as PEFT's ``utils/constants.py`` is for PEFT).
Everything that needs to know where q, v or the MLP sit reads it:

* ``workbench.lora.roles``: which module paths a role selects in a given model;
* ``workbench.lora.targets``: the kind of a layer (``KINDS``) in ``describe_layers``;
* ``workbench.lessons.planner``: encoders (``ENCODER_TYPES``) and the names of q, k, v
  (``layer_names``) when a target has another family's name;
* ``workbench.engine.memory``: which activation formula a model gets
  (``Architecture.tape_pattern``, matched against its module paths).

A new family is a new row here.  Only ``re`` and ``dataclasses``: a leaf.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "QUERY", "KEY", "VALUE", "ATTN_OUT", "FFN_IN", "FFN_OUT", "ROLES", "Architecture", "ARCHITECTURES",
    "ENCODER_TYPES", "KINDS", "architecture_named", "layer_names",
]

QUERY, KEY, VALUE = "query", "key", "value"
ATTN_OUT, FFN_IN, FFN_OUT = "attention output", "FFN in", "FFN out"
ROLES: tuple[str, ...] = (QUERY, KEY, VALUE, ATTN_OUT, FFN_IN, FFN_OUT)


@dataclass(frozen=True)
class Architecture:
    """One model family: its names for the roles, where its blocks sit, and what it is for.

    ``name``: how messages name the family (and the key ``engine.memory`` gives its formula);
    ``model_types``: transformers' ``config.model_type`` values of the family;
    ``paths``: role -> the module paths inside a block (Llama's FFN in: gate_proj and up_proj);
    ``blocks``: the path of the numbered blocks, before the block number (``encoder.layer``);
    ``encoder``: True for encoders, whose natural fine-tuning task is classification.
    """

    name: str
    model_types: tuple[str, ...]
    paths: dict[str, tuple[str, ...]]
    blocks: str
    encoder: bool

    def fused(self, role: str) -> tuple[str, ...]:
        """The roles computed by the same layer(s) as ``role`` (itself included): GPT-2's q, k, v."""
        return tuple(r for r in ROLES if self.paths[r] == self.paths[role])

    @property
    def tape_pattern(self) -> str:
        """A regex matching the query layer of every block: group 1 the prefix, group 2 the block number.

        ``^(.*?)encoder\\.layer\\.(\\d+)\\.attention\\.self\\.query$`` for BERT: the key by which
        ``workbench.engine.memory`` recognises a model and finds its blocks for the activation tape.
        """
        return rf"^(.*?){re.escape(self.blocks)}\.(\d+)\.{re.escape(self.paths[QUERY][0])}$"


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("BERT", ("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie"), {
        QUERY: ("attention.self.query",), KEY: ("attention.self.key",), VALUE: ("attention.self.value",),
        ATTN_OUT: ("attention.output.dense",), FFN_IN: ("intermediate.dense",), FFN_OUT: ("output.dense",),
    }, blocks="encoder.layer", encoder=True),
    Architecture("Llama", ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "olmo", "olmo2", "granite"), {
        QUERY: ("self_attn.q_proj",), KEY: ("self_attn.k_proj",), VALUE: ("self_attn.v_proj",),
        ATTN_OUT: ("self_attn.o_proj",), FFN_IN: ("mlp.gate_proj", "mlp.up_proj"), FFN_OUT: ("mlp.down_proj",),
    }, blocks="layers", encoder=False),
    Architecture("GPT-2", ("gpt2",), {
        QUERY: ("attn.c_attn",), KEY: ("attn.c_attn",), VALUE: ("attn.c_attn",),
        ATTN_OUT: ("attn.c_proj",), FFN_IN: ("mlp.c_fc",), FFN_OUT: ("mlp.c_proj",),
    }, blocks="h", encoder=False),
)

# Encoders of families without a row above (their layers have other names, so no roles).
_OTHER_ENCODER_TYPES = ("distilbert", "albert", "deberta", "deberta-v2", "mpnet", "modernbert")

#: Model types that are encoders: their natural fine-tuning task is classification.
ENCODER_TYPES: tuple[str, ...] = tuple(
    t for a in ARCHITECTURES if a.encoder for t in a.model_types) + _OTHER_ENCODER_TYPES

# Layer names of families without a row above (OPT, BART, Phi, ...), by the end of their path.
_OTHER_KINDS: dict[str, str] = {
    "q_proj": QUERY, "k_proj": KEY, "v_proj": VALUE, "o_proj": ATTN_OUT, "out_proj": ATTN_OUT,
    "gate_proj": FFN_IN, "up_proj": FFN_IN, "down_proj": FFN_OUT, "fc1": FFN_IN, "fc2": FFN_OUT,
    "pooler.dense": "pooler",
}


def _kinds() -> dict[str, str]:
    """Path end -> what the layer does: each family's paths (a fused layer's roles joined), then the others."""
    out: dict[str, str] = {}
    for arch in ARCHITECTURES:
        for role in ROLES:
            fused = arch.fused(role)
            for path in arch.paths[role]:
                out.setdefault(path, role if len(fused) == 1 else "/".join(fused) + " (fused)")
    return {**out, **{k: v for k, v in _OTHER_KINDS.items() if k not in out}}


#: What a layer does, by the end of its path (``"attn.c_attn"``: "query/key/value (fused)").
KINDS: dict[str, str] = _kinds()


def architecture_named(name: str) -> Architecture:
    """The row called ``name`` ("BERT", "Llama", "GPT-2")."""
    for arch in ARCHITECTURES:
        if arch.name == name:
            return arch
    raise KeyError(f"no architecture named {name!r}; known: {', '.join(a.name for a in ARCHITECTURES)}")


def layer_names(role: str) -> tuple[str, ...]:
    """The layer names (last path component) a role has across the families, in table order.

    ``layer_names("query")`` is ``("query", "q_proj", "c_attn")``: BERT's, Llama's, GPT-2's.
    """
    if role not in ROLES:
        raise ValueError(f"{role!r} is not a role; roles: {', '.join(map(repr, ROLES))}")
    return tuple(dict.fromkeys(p.rsplit(".", 1)[-1] for a in ARCHITECTURES for p in a.paths[role]))
