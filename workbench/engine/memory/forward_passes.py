"""One forward pass on paper per architecture: which tensors each block saves for backward.

Each replay walks a model's modules in the order its forward pass runs them and writes
what every operation saves on the ``Tape`` (``tape.py``), labelled by block
(``layer3.act_in``: the FFN activation's input in block 3).  Three families have one:
BERT-style encoders (BERT, RoBERTa), GPT-2-style decoders and Llama-style decoders
(Llama, Qwen2, Mistral).  ``FORWARD_PASSES`` says which module names pick which replay:
the ``tape_pattern`` of each family's row in the one architecture table
(``workbench.lora.architectures``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

from workbench.engine.memory.tape import (
    LinearInfo,
    Tape,
    activation_saves,
    attention,
    attention_path,
    config_value,
    ffn_activation,
    find_blocks,
    hidden_label,
    rms_norm,
)
from workbench.lora.architectures import ARCHITECTURES, architecture_named
from workbench.util.units import FLOAT32_BYTES, INT64_BYTES


def _tape_pattern(name: str) -> str:
    """The regex that finds the blocks of the architecture ``name`` (its query layers)."""
    return architecture_named(name).tape_pattern


def _bert_activations(model: nn.Module, tape: Tape, B: int, S: int, device: str,
                      info: Callable[[str], LinearInfo], trainable_under: Callable[[str], bool]) -> None:
    """BERT-style encoder (post-LayerNorm): embeddings -> N x [attention, FFN] -> head."""
    cfg = model.config
    prefix, layers = find_blocks(model, _tape_pattern("BERT"))
    H = config_value(cfg, "hidden_size")
    heads = config_value(cfg, "num_attention_heads")
    inter = config_value(cfg, "intermediate_size")
    p_hidden = float(config_value(cfg, "hidden_dropout_prob", default=0.0))
    p_attn = float(config_value(cfg, "attention_probs_dropout_prob", default=0.0))
    saves = activation_saves(cfg, "hidden_act")
    T = B * S
    path = attention_path(cfg, device, tape.dropout and p_attn > 0)
    e = tape.e

    # Embeddings: word + position + token type, LayerNorm, dropout.  A trainable lookup
    # table saves its int64 indices.  BERT takes position ids as a view of a buffer (left
    # out, as SavedActivations does) and builds token-type ids of one row (S) from it;
    # RoBERTa builds both from input_ids (B x S each).  Assumes the caller passes no
    # token_type_ids (passing them costs B x S x 8 bytes instead).
    emb = prefix + "embeddings."
    modules = dict(model.named_modules())
    roberta_style = hasattr(modules.get(prefix + "embeddings"), "create_position_ids_from_input_ids")
    g = False
    if trainable_under(emb + "word_embeddings"):
        tape.save("input_ids", T * INT64_BYTES)
        g = True
    if trainable_under(emb + "position_embeddings"):
        if roberta_style:
            tape.save("position_ids", T * INT64_BYTES)
        g = True
    if trainable_under(emb + "token_type_embeddings"):
        tape.save("token_type_ids", (T if roberta_style else S) * INT64_BYTES)
        g = True
    g = tape.layer_norm("emb.sum", T, H, g, trainable_under(emb + "LayerNorm"), "emb.ln")
    tape.drop(p_hidden, T * H, g, "emb.dropout")
    x = hidden_label(layers, 0)
    for pos, i in enumerate(layers):
        L = f"{prefix}encoder.layer.{i}."
        n = f"layer{i}"
        q_i, k_i, v_i = (info(L + "attention.self." + r) for r in ("query", "key", "value"))
        gq = tape.linear(q_i, x, T * H, g, T, n + ".query")
        gk = tape.linear(k_i, x, T * H, g, T, n + ".key")
        gv = tape.linear(v_i, x, T * H, g, T, n + ".value")
        ctx = n + ".context"
        g_ctx = attention(tape, path=path, name=n, B=B, S=S, H=H, heads=heads,
                          q=(n + ".q", T * H * e), k=(n + ".k", T * H * e), v=(n + ".v", T * H * e),
                          gq=gq, gk=gk, gv=gv, p_drop=p_attn, ctx=ctx)
        g_o = tape.linear(info(L + "attention.output.dense"), ctx, T * H, g_ctx, T, n + ".attn_out")
        tape.drop(p_hidden, T * H, g_o, n + ".attn_out.dropout")
        g1 = tape.layer_norm(n + ".ln1_in", T, H, g_o or g, trainable_under(L + "attention.output.LayerNorm"), n + ".ln1")
        h1 = n + ".ln1_out"
        g2 = tape.linear(info(L + "intermediate.dense"), h1, T * H, g1, T, n + ".intermediate")
        ffn_activation(tape, saves, n + ".act_in", n + ".act_out", T * inter, g2, n)
        g3 = tape.linear(info(L + "output.dense"), n + ".act_out", T * inter, g2, T, n + ".ffn_out")
        tape.drop(p_hidden, T * H, g3, n + ".ffn_out.dropout")
        g = tape.layer_norm(n + ".ln2_in", T, H, g3 or g1, trainable_under(L + "output.LayerNorm"), n + ".ln2")
        x = hidden_label(layers, pos + 1)

    # Heads.  The [CLS] vector hidden[:, 0] is a view: whoever saves it keeps the
    # whole last hidden state (B x S x H) alive, so it costs T x H, not B x H.
    p_cls = float(config_value(cfg, "classifier_dropout", default=-1.0))
    p_cls = p_hidden if p_cls < 0 else p_cls
    labels = config_value(cfg, "num_labels", default=2)
    names = modules
    pooler = prefix + "pooler.dense"
    head_prefix = prefix[: -len("bert.")] if prefix.endswith("bert.") else prefix
    head_prefix = head_prefix[: -len("roberta.")] if head_prefix.endswith("roberta.") else head_prefix
    classifier = names.get(head_prefix + "classifier")
    if classifier is None:
        return  # a bare encoder: the caller's loss decides what more is saved
    if pooler in names:  # BERT: tanh(W_p h_cls) -> dropout -> classifier
        g = tape.linear(info(pooler), x, B * H, g, B, "pooler", x_storage_bytes=T * H * e)
        if g:
            tape.save("pooler.tanh_out", B * H * e)
        tape.drop(p_cls, B * H, g, "head.dropout")
        pooled = "head.dropout_out" if (tape.dropout and p_cls > 0) else "pooler.tanh_out"
        g = tape.linear(info(head_prefix + "classifier"), pooled, B * H, g, B, "classifier")
    elif head_prefix + "classifier.out_proj" in names:  # RoBERTa: dropout -> dense -> tanh -> dropout -> out_proj
        tape.drop(p_cls, B * H, g, "head.dropout1")
        if tape.dropout and p_cls > 0:
            h, h_bytes = "head.dropout1_out", None
        else:
            h, h_bytes = x, T * H * e
        g = tape.linear(info(head_prefix + "classifier.dense"), h, B * H, g, B, "head.dense", x_storage_bytes=h_bytes)
        if g:
            tape.save("head.tanh_out", B * H * e)
        tape.drop(p_cls, B * H, g, "head.dropout2")
        pooled = "head.dropout2_out" if (tape.dropout and p_cls > 0) else "head.tanh_out"
        g = tape.linear(info(head_prefix + "classifier.out_proj"), pooled, B * H, g, B, "classifier")
    else:
        raise ValueError(f"unsupported classification head {type(classifier).__name__} on {type(model).__name__}")
    if g:  # cross entropy: log-softmax of the logits, the labels, the weight normaliser
        tape.save("loss.log_probs", B * labels * e)
        tape.save("loss.labels", B * INT64_BYTES)
        tape.save("loss.total_weight", e)


def _gpt2_activations(model: nn.Module, tape: Tape, B: int, S: int, device: str,
                      info: Callable[[str], LinearInfo], trainable_under: Callable[[str], bool]) -> None:
    """GPT-2-style decoder (pre-LayerNorm, fused q/k/v projection ``c_attn``) -> LM or score head."""
    cfg = model.config
    prefix, layers = find_blocks(model, _tape_pattern("GPT-2"))
    H = config_value(cfg, "n_embd", "hidden_size")
    heads = config_value(cfg, "n_head", "num_attention_heads")
    inter = config_value(cfg, "n_inner", default=4 * H)
    vocab = config_value(cfg, "vocab_size")
    p_emb = float(config_value(cfg, "embd_pdrop", default=0.0))
    p_res = float(config_value(cfg, "resid_pdrop", default=0.0))
    p_attn = float(config_value(cfg, "attn_pdrop", default=0.0))
    saves = activation_saves(cfg, "activation_function")
    T, e = B * S, tape.e
    path = attention_path(cfg, device, tape.dropout and p_attn > 0)
    # With use_cache=True the model concatenates K and V into a cache even in training,
    # so a fused kernel sees fresh copies of K and V instead of views of the q/k/v output.
    cache = bool(getattr(cfg, "use_cache", False))

    g = False
    if trainable_under(prefix + "wte"):
        tape.save("input_ids", T * INT64_BYTES)
        g = True
    if trainable_under(prefix + "wpe"):
        tape.save("position_ids", S * INT64_BYTES)  # built with arange, not a buffer
        g = True
    tape.drop(p_emb, T * H, g, "emb.dropout")
    x = hidden_label(layers, 0)
    for pos, i in enumerate(layers):
        L, n = f"{prefix}h.{i}.", f"layer{i}"
        g1 = tape.layer_norm(x, T, H, g, trainable_under(L + "ln_1"), n + ".ln1")
        g_qkv = tape.linear(info(L + "attn.c_attn"), n + ".ln1_out", T * H, g1, T, n + ".c_attn")
        qkv = (n + ".qkv", 3 * T * H * e)  # one storage, q, k, v are views of it
        k = (n + ".k_cache", T * H * e) if cache else qkv
        v = (n + ".v_cache", T * H * e) if cache else qkv
        ctx = n + ".context"
        g_ctx = attention(tape, path=path, name=n, B=B, S=S, H=H, heads=heads, q=qkv, k=k, v=v,
                          gq=g_qkv, gk=g_qkv, gv=g_qkv, p_drop=p_attn, ctx=ctx)
        g_o = tape.linear(info(L + "attn.c_proj"), ctx, T * H, g_ctx, T, n + ".attn_out")
        tape.drop(p_res, T * H, g_o, n + ".attn_out.dropout")
        g = g_o or g
        h = n + ".resid1"
        g2 = tape.layer_norm(h, T, H, g, trainable_under(L + "ln_2"), n + ".ln2")
        g3 = tape.linear(info(L + "mlp.c_fc"), n + ".ln2_out", T * H, g2, T, n + ".c_fc")
        ffn_activation(tape, saves, n + ".act_in", n + ".act_out", T * inter, g3, n)
        g4 = tape.linear(info(L + "mlp.c_proj"), n + ".act_out", T * inter, g3, T, n + ".mlp_out")
        tape.drop(p_res, T * H, g4, n + ".mlp_out.dropout")
        g = g4 or g
        x = hidden_label(layers, pos + 1)
    g = tape.layer_norm(x, T, H, g, trainable_under(prefix + "ln_f"), "ln_f")
    names = dict(model.named_modules())
    head_prefix = prefix[: -len("transformer.")] if prefix.endswith("transformer.") else prefix
    _decoder_head(tape, model, names, info, head_prefix, "ln_f_out", B=B, T=T, H=H, vocab=vocab, e=e, g=g)


def _decoder_head(tape: Tape, model: nn.Module, names: Mapping[str, nn.Module], info: Callable[[str], Any],
                  head_prefix: str, x: str, *, B: int, T: int, H: int, vocab: int, e: int, g: bool) -> None:
    """A decoder's head on its final norm's output ``x`` (GPT-2 and Llama alike), and its loss."""
    cfg = model.config
    if head_prefix + "lm_head" in names:
        # Every position predicts the next token: cross entropy over T x vocab logits,
        # computed in float32 whatever the model's dtype.
        g = tape.linear(info(head_prefix + "lm_head"), x, T * H, g, T, "lm_head")
        if g:
            tape.save("loss.log_probs", T * vocab * FLOAT32_BYTES)
            tape.save("loss.labels", T * INT64_BYTES)
            tape.save("loss.total_weight", FLOAT32_BYTES)
    elif head_prefix + "score" in names:
        labels = config_value(cfg, "num_labels", default=2)
        # Scores for every position, then the last non-padding one is picked: the
        # indexing saves its two index vectors (B each).
        g = tape.linear(info(head_prefix + "score"), x, T * H, g, T, "score")
        if g:
            tape.save("score.pick_indices", 2 * B * INT64_BYTES)
            tape.save("loss.log_probs", B * labels * e)
            tape.save("loss.labels", B * INT64_BYTES)
            tape.save("loss.total_weight", e)
    else:
        raise ValueError(f"unsupported head on {type(model).__name__}: expected lm_head or score")


def _llama_activations(model: nn.Module, tape: Tape, B: int, S: int, device: str,
                       info: Callable[[str], LinearInfo], trainable_under: Callable[[str], bool]) -> None:
    """Llama-style decoder (Llama, Qwen2, Mistral): RMSNorm, rotary positions, grouped-query
    attention through sdpa, SwiGLU FFN -> LM head (tied or not) or score head.

    Per block, T = B*S tokens, H hidden, I FFN width, h query heads, g key/value heads of d,
    e bytes per element, full fine-tuning (every weight trains):
      RMSNorm x2   2 x (T*H*4 input in float32 + T*4 for 1/rms + T*H*e normalised x)
      q/k/v input  T*H*e (shared), rotated q T*h*d*e, k and v T*g*d*e each (sdpa's own GQA
                   when the batch is unpadded; padded: transformers repeats k and v to h heads,
                   T*h*d*e each when 1 < g < h, and the kernel keeps a B*S*S*e mask), output T*h*d*e (o_proj's
                   input too), log-sum-exp B*h*S*4
      SwiGLU       gate/up input T*H*e (shared); gate output (SiLU's input), SiLU output, up
                   output, their product (down_proj's input): 4 x T*I*e
    In fp32 unpadded that is (8 T*H + 2 T*g*d + 4 T*I + 2 T + B*h*S) x 4 bytes a block.
    plus, once: cos and sin of the rotary embedding (S*d*e each), the final RMSNorm, the LM
    head's input when it trains, and the loss (T*vocab float32 log-probabilities).  With a
    frozen base (LoRA), the norms' normalised x, down_proj's input (unless it is adapted)
    and everything below the lowest adapter are not saved; an adapter saves its input and A x.
    """
    cfg = model.config
    prefix, layers = find_blocks(model, _tape_pattern("Llama"))
    names = dict(model.named_modules())
    first = f"{prefix}layers.{layers[0]}."
    if first + "mlp.gate_proj" not in names or first + "input_layernorm" not in names:
        raise ValueError(
            f"no activation formula for {type(model).__name__} (model_type {getattr(cfg, 'model_type', '?')!r}): "
            "the Llama-style formula needs blocks with input_layernorm, self_attn.q_proj and a gated "
            "mlp.gate_proj/up_proj/down_proj (Llama, Qwen2, Mistral)"
        )
    H = config_value(cfg, "hidden_size")
    heads = config_value(cfg, "num_attention_heads")
    kv_heads = config_value(cfg, "num_key_value_heads", default=heads)
    d = getattr(cfg, "head_dim", None) or H // heads
    inter = config_value(cfg, "intermediate_size")
    vocab = config_value(cfg, "vocab_size")
    p_attn = float(getattr(cfg, "attention_dropout", 0.0) or 0.0)
    if attention_path(cfg, device, tape.dropout and p_attn > 0) != "fused":
        raise ValueError(
            "the Llama-style formula models sdpa's fused attention kernels (attn_implementation='sdpa', "
            f"attention_dropout 0); this model has {getattr(cfg, '_attn_implementation', None)!r} with "
            f"attention_dropout {p_attn}"
        )
    saves = activation_saves(cfg, "hidden_act")
    T, e = B * S, tape.e
    q_bytes, kv_bytes = T * heads * d * e, T * kv_heads * d * e
    # Padded: transformers' repeat_kv hands sdpa k and v at h heads, copies when 1 < g < h (for
    # g = 1, multi-query attention, the repeat is a stride-0 view of the g-head tensors).
    repeated = tape.padded and kv_heads not in (1, heads)

    g = False
    if trainable_under(prefix + "embed_tokens"):
        tape.save("input_ids", T * INT64_BYTES)
        g = True
    x = hidden_label(layers, 0)
    for pos, i in enumerate(layers):
        L, n = f"{prefix}layers.{i}.", f"layer{i}"
        g1 = rms_norm(tape, x, T, H, g, trainable_under(L + "input_layernorm"), n + ".ln1")
        ln1 = n + ".ln1_out"
        gq = tape.linear(info(L + "self_attn.q_proj"), ln1, T * H, g1, T, n + ".q_proj")
        gk = tape.linear(info(L + "self_attn.k_proj"), ln1, T * H, g1, T, n + ".k_proj")
        gv = tape.linear(info(L + "self_attn.v_proj"), ln1, T * H, g1, T, n + ".v_proj")
        if gq or gk:  # q*cos + rotate(q)*sin saves cos and sin (made once, shared by every block)
            tape.save("rotary.cos", S * d * e)
            tape.save("rotary.sin", S * d * e)
        k = (n + ".k_repeated", q_bytes) if repeated else (n + ".k_rotated", kv_bytes)
        v = (n + ".v_repeated", q_bytes) if repeated else (n + ".v", kv_bytes)
        ctx = n + ".context"
        g_ctx = attention(tape, path="fused", name=n, B=B, S=S, H=heads * d, heads=heads,
                          q=(n + ".q_rotated", q_bytes), k=k, v=v, gq=gq, gk=gk, gv=gv, p_drop=0.0, ctx=ctx)
        g_o = tape.linear(info(L + "self_attn.o_proj"), ctx, T * heads * d, g_ctx, T, n + ".o_proj")
        g = g_o or g
        g2 = rms_norm(tape, n + ".resid1", T, H, g, trainable_under(L + "post_attention_layernorm"), n + ".ln2")
        ln2 = n + ".ln2_out"
        g_gate = tape.linear(info(L + "mlp.gate_proj"), ln2, T * H, g2, T, n + ".gate_proj")
        g_up = tape.linear(info(L + "mlp.up_proj"), ln2, T * H, g2, T, n + ".up_proj")
        ffn_activation(tape, saves, n + ".gate_out", n + ".act_out", T * inter, g_gate, n)
        if g_gate:  # act * up: d(act) needs up
            tape.save(n + ".up_out", T * inter * e)
        if g_up:  # d(up) needs act
            tape.save(n + ".act_out", T * inter * e)
        g_down = tape.linear(info(L + "mlp.down_proj"), n + ".product", T * inter, g_gate or g_up, T,
                             n + ".down_proj")
        g = g_down or g
        x = hidden_label(layers, pos + 1)
    g = rms_norm(tape, x, T, H, g, trainable_under(prefix + "norm"), "norm")
    head_prefix = prefix[: -len("model.")] if prefix.endswith("model.") else prefix
    _decoder_head(tape, model, names, info, head_prefix, "norm_out", B=B, T=T, H=H, vocab=vocab, e=e, g=g)


#: Which replay each row of the architecture table (``workbench.lora.architectures``) gets, by its name.
_BUILDERS: dict[str, Callable[..., None]] = {
    "BERT": _bert_activations,
    "GPT-2": _gpt2_activations,
    "Llama": _llama_activations,
}

#: (a row's ``tape_pattern``, its replay) for every row of the architecture table that has one, in
#: the table's order: a model gets the replay whose pattern matches one of its module paths.
FORWARD_PASSES: tuple[tuple[str, Callable[..., None]], ...] = tuple(
    (arch.tape_pattern, _BUILDERS[arch.name]) for arch in ARCHITECTURES if arch.name in _BUILDERS
)
