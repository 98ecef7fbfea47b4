"""The planted-rank lesson: a teacher with a known rank-k update, students of rank r.

Everything runs on the 2-layer tiny BERT (hidden 32, FFN 64) with the planted update
in the FFN's first layer (32 -> 64), so a whole rank sweep takes a few seconds.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from toy_models import tiny_bert_classifier, tiny_gpt2_classifier, toy_tokenizer

from workbench.lessons.delta_w import effective_rank, singular_values
from workbench.lora.config import LoRAConfig
from workbench.lessons.planted_rank import (
    PlantedConfig,
    captured_energy,
    delta_error,
    eckart_young_fraction,
    findings,
    fit_student,
    layer_inputs,
    loss_vs_rank_figure,
    loss_curves_figure,
    make_teacher,
    output_error,
    output_singular_values,
    planted_delta,
    prepare_task,
    random_token_batches,
    rank_sweep,
    spectrum_comparison_figure,
    target_paths,
)

TINY = dict(
    model="tiny-bert", targets=["intermediate.dense"], layers=[-1], true_rank=2, scale=0.4,
    batch_size=16, seq_len=32, train_batches=8, eval_batches=2, steps=400, lr=3e-2, seed=0, threads=1,
)
FFN_IN = "encoder.layer.1.intermediate.dense"


@pytest.fixture(scope="module")
def tiny():
    """The toy table's tiny BERT (its encoder is ``load_base("tiny-bert", seed=0)``'s) and its tokenizer."""
    return tiny_bert_classifier(), toy_tokenizer("tiny-bert")


@pytest.fixture(scope="module")
def sweep(tiny):
    base, tok = tiny
    return rank_sweep(PlantedConfig(**TINY), [1, 2, 4], base=base, tokenizer=tok)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- the planted update


@pytest.mark.parametrize("k, scale", [(1, 0.25), (3, 0.4), (5, 0.7)])
def test_planted_update_has_rank_k_equal_singular_values_and_the_requested_norm(tiny, k, scale):
    base, _ = tiny
    cfg = PlantedConfig(**{**TINY, "true_rank": k, "scale": scale})
    teacher, planted = make_teacher(base, cfg)
    assert list(planted) == [FFN_IN]
    delta = planted[FFN_IN]
    w = base.base_model.get_submodule(FFN_IN).weight.detach().double()
    assert delta.shape == w.shape == (64, 32)
    assert effective_rank(delta) == k
    s = singular_values(delta)
    expected = scale * torch.linalg.matrix_norm(w) / math.sqrt(k)  # ||ΔW*||_F = sqrt(k) s
    torch.testing.assert_close(s[:k], torch.full((k,), float(expected), dtype=torch.float64), rtol=1e-10, atol=0)
    assert float(torch.linalg.matrix_norm(delta) / torch.linalg.matrix_norm(w)) == pytest.approx(scale, rel=1e-10)


def test_geometric_profile_halves_each_singular_value(tiny):
    base, _ = tiny
    _, planted = make_teacher(base, PlantedConfig(**{**TINY, "true_rank": 4, "profile": "geometric", "decay": 0.5}))
    s = singular_values(planted[FFN_IN])[:4]
    torch.testing.assert_close(s[1:] / s[:-1], torch.full((3,), 0.5, dtype=torch.float64), rtol=1e-9, atol=0)


def test_planted_delta_rejects_a_rank_the_shape_cannot_have():
    with pytest.raises(ValueError, match="exceeds min"):
        planted_delta(4, 3, torch.ones(4), torch.Generator().manual_seed(0))


def test_teacher_differs_from_the_base_exactly_by_the_planted_update_and_nowhere_else(tiny):
    base, _ = tiny
    before = _state(base)
    cfg = PlantedConfig(**{**TINY, "targets": ["value"], "layers": None})
    teacher, planted = make_teacher(base, cfg)
    assert list(planted) == ["encoder.layer.0.attention.self.value", "encoder.layer.1.attention.self.value"]
    # the two layers get different draws
    assert not torch.allclose(planted["encoder.layer.0.attention.self.value"], planted["encoder.layer.1.attention.self.value"])
    base_state = {k: v for k, v in _state(base.base_model).items()}
    changed = set()
    for key, t in teacher.state_dict().items():
        b = base_state[key]
        if torch.equal(t, b):
            continue
        changed.add(key)
        path = key.removesuffix(".weight")
        # float32 weights: the difference carries rounding of the weights' size, not of the update's
        torch.testing.assert_close((t - b).double(), planted[path], rtol=0, atol=1e-6 * float(b.abs().max()))
    assert changed == {p + ".weight" for p in planted}
    after = _state(base)
    assert all(torch.equal(before[k], after[k]) for k in before), "make_teacher changed the base model"
    assert not any(p.requires_grad for p in teacher.parameters())


def test_the_same_seed_plants_the_same_update_and_another_seed_another(tiny):
    base, _ = tiny
    a = make_teacher(base, PlantedConfig(**TINY))[1][FFN_IN]
    b = make_teacher(base, PlantedConfig(**TINY))[1][FFN_IN]
    c = make_teacher(base, PlantedConfig(**{**TINY, "seed": 1}))[1][FFN_IN]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_conv1d_layers_get_the_transposed_update():
    base = tiny_gpt2_classifier()
    cfg = PlantedConfig(**{**TINY, "model": "tiny-gpt2", "targets": ["c_attn"], "layers": [0]})
    teacher, planted = make_teacher(base, cfg)
    (path, delta), = planted.items()
    assert path == "h.0.attn.c_attn" and delta.shape == (96, 32)  # (out x in); Conv1D stores (in x out)
    diff = teacher.get_submodule(path).weight - base.base_model.get_submodule(path).weight
    scale = float(base.base_model.get_submodule(path).weight.detach().abs().max())
    torch.testing.assert_close(diff.double(), delta.T, rtol=0, atol=1e-6 * scale)


def test_negative_layers_count_from_the_end_and_missing_blocks_are_refused(tiny):
    base, _ = tiny
    assert target_paths(base, PlantedConfig(**{**TINY, "layers": [-2]})) == ["encoder.layer.0.intermediate.dense"]
    with pytest.raises(ValueError, match="blocks 0..1"):
        target_paths(base, PlantedConfig(**{**TINY, "layers": [2]}))
    with pytest.raises(ValueError, match="true_rank 33 exceeds"):
        make_teacher(base, PlantedConfig(**{**TINY, "true_rank": 33}))


@pytest.mark.parametrize("field, value", [
    ("true_rank", 0), ("scale", -0.1), ("scale", float("nan")), ("profile", "flat"), ("decay", 1.5),
    ("targets", []), ("targets", ""), ("layers", []), ("steps", 0), ("lr", 0), ("batch_size", 2.5),
    ("threads", 0), ("lora", {"alpha": 8}), ("lora", LoRAConfig(layers=(0,))),
])
def test_bad_settings_are_refused_with_the_field_named(field, value):
    with pytest.raises(ValueError, match=field):
        PlantedConfig(**{**TINY, field: value})


def test_lora_settings_are_one_loraconfig():
    """The students' LoRA settings are a LoRAConfig (bad values are refused by it), not copies."""
    with pytest.raises(TypeError):
        PlantedConfig(**{**TINY, "alpha": 8})  # no field of its own for alpha
    with pytest.raises(ValueError, match="alpha must be a positive number"):
        PlantedConfig(**{**TINY, "lora": LoRAConfig(alpha=-1)})
    cfg = PlantedConfig(**{**TINY, "lora": LoRAConfig(alpha=8, rslora=True, dropout=0.1)})
    assert cfg.student_lora(4, ["a.b"]) == LoRAConfig(rank=4, alpha=8, targets=("a.b",), rslora=True, dropout=0.1)
    assert PlantedConfig(**TINY).student_lora(3, ["a.b"]) == LoRAConfig(rank=3, alpha=3, targets=("a.b",))
    assert cfg.to_dict()["lora"] == cfg.lora.to_dict()


# --------------------------------------------------------------------------- the task and the student


def test_cached_prefix_computes_what_the_whole_model_computes(tiny):
    base, tok = tiny
    teacher, _ = make_teacher(base, PlantedConfig(**TINY))
    cached = prepare_task(base, teacher, PlantedConfig(**TINY), tok)
    full = prepare_task(base, teacher, PlantedConfig(**{**TINY, "cache_prefix": False}), tok)
    assert cached.start_block == 1 and full.start_block is None
    assert cached.inputs[0].shape == (16, 32, 32) and full.inputs[0].shape == (16, 32)
    assert cached.base_loss > 0
    assert cached.base_loss == pytest.approx(full.base_loss, rel=1e-4)
    a = fit_student(base, teacher, PlantedConfig(**{**TINY, "steps": 5}), 2, task=cached)
    b = fit_student(base, teacher, PlantedConfig(**{**TINY, "steps": 5}), 2, task=full)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-3)


def test_a_fresh_student_starts_at_the_base_model_and_leaves_the_base_untouched(tiny):
    base, tok = tiny
    before, flags = _state(base), [p.requires_grad for p in base.parameters()]
    cfg = PlantedConfig(**{**TINY, "steps": 1})
    teacher, _ = make_teacher(base, cfg)
    task = prepare_task(base, teacher, cfg, tok)
    res = fit_student(base, teacher, cfg, 2, task=task)
    # the first loss is measured before the first update, while B = 0 makes the student the
    # base model: it is the base model's error on training batch 0, run the ordinary way
    ids = random_token_batches(len(tok), cfg, tok.all_special_ids)[0]
    with torch.no_grad():
        base_err = torch.mean((base.base_model(input_ids=ids).last_hidden_state - task.targets[0]) ** 2)
    assert res.losses[0] == pytest.approx(float(base_err), rel=1e-5)
    assert all(torch.equal(before[k], v) for k, v in _state(base).items())
    assert [p.requires_grad for p in base.parameters()] == flags  # add_lora froze a copy, not the base


def test_the_thread_setting_holds_only_while_training(tiny):
    base, tok = tiny
    cfg = PlantedConfig(**{**TINY, "steps": 2, "threads": 1})
    teacher, _ = make_teacher(base, cfg)
    before = torch.get_num_threads()
    seen: list[int] = []
    hook = base.base_model.encoder.layer[1].register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    torch.set_num_threads(2)
    try:
        fit_student(base, teacher, cfg, 1, tokenizer=tok)  # prepare_task runs the base model
        assert torch.get_num_threads() == 2
    finally:
        hook.remove()
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}


def test_alpha_defaults_to_the_rank_so_the_scaling_is_one(tiny):
    base, tok = tiny
    cfg = PlantedConfig(**{**TINY, "steps": 1})
    teacher, _ = make_teacher(base, cfg)
    task = prepare_task(base, teacher, cfg, tok)
    for r in (1, 4):
        res = fit_student(base, teacher, cfg, r, task=task)
        assert (res.alpha, res.scaling, res.trainable) == (r, 1.0, r * (32 + 64))
    fixed = fit_student(base, teacher, PlantedConfig(**{**TINY, "steps": 1, "lora": LoRAConfig(alpha=8)}), 4, task=task)
    assert (fixed.alpha, fixed.scaling) == (8.0, 2.0)
    rs = fit_student(base, teacher, PlantedConfig(**{**TINY, "steps": 1, "lora": LoRAConfig(alpha=8, rslora=True)}),
                     4, task=task)
    assert rs.scaling == 4.0 and rs.lora.rslora and rs.lora.targets == (FFN_IN,)


def test_students_of_rank_k_or_more_learn_the_teacher_and_lower_ranks_cannot(sweep):
    t = sweep.table.set_index("rank")
    assert list(t.index) == [1, 2, 4]
    below, at, above = t.relative_loss[1], t.relative_loss[2], t.relative_loss[4]
    assert below > 0.1  # half of Delta W* is out of reach of a rank-1 student
    assert at < below / 100 and above < below / 100  # the knee: two decades and more
    # Eckart-Young: equal singular values, k = 2, r = 1 leaves exactly half of ||Delta W*||_F^2
    assert t.eckart_young[1] == pytest.approx(0.5, rel=1e-9)
    assert t.eckart_young[2] == 0 and t.eckart_young[4] == 0
    # the loss a rank-1 student keeps is of the size Eckart-Young gives for the layer's outputs
    # (Delta W* X^T), and that predicts it better than the tail of Delta W* alone
    assert 0.5 < below / t.eckart_young_inputs[1] < 1.5
    assert abs(below - t.eckart_young_inputs[1]) < abs(below - t.eckart_young[1])


def test_findings_read_the_knee_off_the_table(sweep):
    """What notebook 05 shows in section 3: the numbers, the two sentences and the paragraph."""
    f = findings(sweep)
    t = sweep.table.set_index("rank").relative_loss
    assert (f.true_rank, f.best_below, f.at_k, f.worst_at_or_above) == (2, t[1], t[2], max(t[2], t[4]))
    assert (f.worst_above, f.worst_above_loss) == (4, t[4])
    assert f.knee == t[1] / t[2] and f.knee > 100 and f.above_k_ratio == t[4] / t[2]
    assert len(f.lines) == 2 and f.lines[0].startswith("best student below k keeps")
    assert f.reading.startswith("**Reading it.**") and f"{t[1] / t[2]:,.0f}x below" in f.reading
    assert "$r = 4$" in f.reading and f.reading.endswith("buys nothing here.")
    assert ("Why more" in f.reading) == (t[4] > t[2])
    # without a student below k there is no knee to read, and the findings say so
    none_below = findings(dataclasses.replace(sweep, table=sweep.table[sweep.table["rank"] >= 2]))
    assert none_below.best_below is None and none_below.knee is None and len(none_below.lines) == 0
    assert "both sides" in none_below.reading

def test_a_student_of_rank_k_recovers_the_planted_update_where_the_inputs_reach(sweep):
    delta = sweep.planted[FFN_IN]
    learned = sweep.results[2].learned[FFN_IN]
    x = sweep.inputs[FFN_IN]
    # thresholds hold for seeds 0..3 (seed 0 gives 2e-4, 0.95 and singular values 1.00, 0.91 x planted)
    assert output_error(learned, delta, x) < 0.2
    assert captured_energy(learned, delta) > 0.85
    torch.testing.assert_close(singular_values(learned)[:2], singular_values(delta)[:2], rtol=0.2, atol=0)
    assert effective_rank(learned) == 2
    # a rank-1 subspace holds at most sigma_1^2 of Delta W*'s energy: half, for two equal values
    assert 0.1 < captured_energy(sweep.results[1].learned[FFN_IN], delta) <= 0.5 + 1e-9


def test_layer_inputs_are_what_the_layer_reads_in_the_whole_model(tiny, sweep):
    base, tok = tiny
    cfg = sweep.config
    x = sweep.inputs[FFN_IN]
    assert x.shape == (cfg.eval_batches * cfg.batch_size * cfg.seq_len, 32) and x.dtype == torch.float64
    # independently: the whole base model on the evaluation batches, with a hook on the layer
    ids = random_token_batches(len(tok), cfg, tok.all_special_ids)[cfg.train_batches:]
    rows = []
    hook = base.base_model.get_submodule(FFN_IN).register_forward_hook(lambda _m, a, _o: rows.append(a[0].reshape(-1, 32)))
    try:
        with torch.no_grad():
            for batch in ids:
                base.base_model(input_ids=batch)
    finally:
        hook.remove()
    torch.testing.assert_close(x, torch.cat(rows).double(), rtol=1e-5, atol=1e-5)
    teacher, _ = make_teacher(base, cfg)
    task = prepare_task(base, teacher, cfg, tok)
    assert torch.equal(layer_inputs(base, task, FFN_IN), x)
    with pytest.raises(ValueError, match="not a planted layer"):
        layer_inputs(base, task, "encoder.layer.0.intermediate.dense")
    # the layer reads LayerNorm outputs; tiny BERT's LayerNorm starts at weight 1, bias 0,
    # so every input has mean 0 over its features: the all-ones direction is never excited
    assert float(x.mean(dim=1).abs().max()) < 1e-5


# --------------------------------------------------------------------------- closed forms and measures


def test_eckart_young_fraction_is_the_error_of_the_truncated_svd():
    gen = torch.Generator().manual_seed(3)
    m = torch.randn(12, 9, generator=gen, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    for r in range(0, 10):
        best = (u[:, :r] * s[:r]) @ vh[:r]
        by_hand = float(torch.linalg.matrix_norm(m - best) ** 2 / torch.linalg.matrix_norm(m) ** 2)
        assert eckart_young_fraction(s, r) == pytest.approx(by_hand, abs=1e-12)
    assert [eckart_young_fraction([2.0] * 4, r) for r in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    with pytest.raises(ValueError, match="all zero"):
        eckart_young_fraction([0.0, 0.0], 1)


def test_the_output_eckart_young_bound_holds_and_is_reached():
    gen = torch.Generator().manual_seed(5)
    delta = planted_delta(7, 5, torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64), gen)
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64) * torch.tensor([5.0, 1.0, 1.0, 0.3, 0.1])
    sv = output_singular_values(delta, x)
    total = float((sv**2).sum())
    for r in (1, 2):
        tail = eckart_young_fraction(sv, r)
        # the best rank-r update on these inputs: truncate Delta W* X^T and map back with X^T's pseudo-inverse
        u, s, vh = torch.linalg.svd(delta @ x.T, full_matrices=False)
        best = ((u[:, :r] * s[:r]) @ vh[:r]) @ torch.linalg.pinv(x.T)
        assert torch.linalg.matrix_rank(best) == r
        assert output_error(best, delta, x) ** 2 == pytest.approx(tail, rel=1e-9)
        # any other rank-r update does worse, e.g. the truncated SVD of Delta W* itself
        u2, s2, vh2 = torch.linalg.svd(delta)
        naive = (u2[:, :r] * s2[:r]) @ vh2[:r]
        assert output_error(naive, delta, x) ** 2 >= tail - 1e-12
        assert float(torch.linalg.matrix_norm((best - delta) @ x.T) ** 2) == pytest.approx(tail * total, rel=1e-9)


def test_output_error_ignores_what_the_inputs_never_reach_but_delta_error_does_not():
    gen = torch.Generator().manual_seed(1)
    delta = planted_delta(6, 4, torch.tensor([1.0, 1.0], dtype=torch.float64), gen)
    x = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    x[:, 3] = 0  # the inputs never use feature 3
    unseen = torch.zeros(6, 4, dtype=torch.float64)
    unseen[:, 3] = 1.0
    assert output_error(delta + unseen, delta, x) == pytest.approx(0.0, abs=1e-12)
    assert delta_error(delta + unseen, delta) == pytest.approx(math.sqrt(6) / math.sqrt(2), rel=1e-12)
    assert captured_energy(delta, delta) == pytest.approx(1.0, rel=1e-12)


# --------------------------------------------------------------------------- figures


def _line(fig: Figure, gid: str):
    found = [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == gid]
    assert len(found) == 1, f"expected one line {gid!r}, found {len(found)}"
    return found[0]


def test_loss_figure_draws_the_table(sweep):
    fig = loss_vs_rank_figure(sweep.table, sweep.config.true_rank)
    assert isinstance(fig, Figure)
    t = sweep.table.sort_values("rank")
    line = _line(fig, "measured")
    np.testing.assert_array_equal(line.get_xdata(), t["rank"].to_numpy())
    np.testing.assert_array_equal(line.get_ydata(), t["relative_loss"].to_numpy())
    ey = _line(fig, "eckart_young")  # drawn only where it is not zero: r = 1
    np.testing.assert_array_equal(ey.get_xdata(), [1])
    np.testing.assert_allclose(ey.get_ydata(), [0.5], rtol=1e-12)
    np.testing.assert_allclose(_line(fig, "eckart_young_inputs").get_ydata(), t["eckart_young_inputs"].iloc[:1])
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert any(list(line.get_xdata()) == [2, 2] for line in ax.get_lines())  # the vertical line at k
    raw = loss_vs_rank_figure(sweep.table, 2, column="final_loss")
    np.testing.assert_array_equal(_line(raw, "measured").get_ydata(), t["final_loss"].to_numpy())


def test_loss_figure_refuses_bad_input(sweep):
    with pytest.raises(ValueError, match="lacks the columns"):
        loss_vs_rank_figure(sweep.table.drop(columns=["relative_loss"]), 2)
    with pytest.raises(TypeError, match="DataFrame"):
        loss_vs_rank_figure([1, 2], 2)
    with pytest.raises(ValueError, match="no rows"):
        loss_vs_rank_figure(sweep.table.iloc[:0], 2)
    with pytest.raises(ValueError, match="true_rank"):
        loss_vs_rank_figure(sweep.table, 0)


def test_spectrum_figure_draws_both_spectra(sweep):
    delta = sweep.planted[FFN_IN]
    learned = {r: res.learned[FFN_IN] for r, res in sweep.results.items()}
    fig = spectrum_comparison_figure(learned, delta)
    assert len([ax for ax in fig.axes if ax.axison]) == 3  # one panel per rank
    for r, d in learned.items():
        y = _line(fig, f"learned_r{r}").get_ydata()
        assert len(y) == effective_rank(d) <= r
        np.testing.assert_allclose(y, singular_values(d)[: len(y)].numpy(), rtol=1e-12)
    planted_lines = [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == "planted"]
    assert len(planted_lines) == 3
    np.testing.assert_allclose(planted_lines[0].get_ydata(), singular_values(delta)[:2].numpy(), rtol=1e-12)
    single = spectrum_comparison_figure(learned[2], delta)
    np.testing.assert_allclose(_line(single, "learned").get_ydata(), singular_values(learned[2])[:2].numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="Delta W\\* is"):
        spectrum_comparison_figure(torch.zeros(3, 3), delta)
    with pytest.raises(TypeError, match="mapping"):
        spectrum_comparison_figure([learned[2]], delta)


def test_loss_curves_figure_draws_every_step(sweep):
    fig = loss_curves_figure(sweep.results, sweep.config.true_rank)
    for r, res in sweep.results.items():
        line = _line(fig, f"r{r}")
        np.testing.assert_array_equal(line.get_ydata(), res.losses)
        assert line.get_linestyle() == ("--" if r < 2 else "-")
    assert len(sweep.results[1].losses) == sweep.config.steps
