"""What notebook 08 states (workbench.lessons.many_adapters' findings), on hand-made tables.

The serving measurements themselves (memory table, mixed batch, latency, scores on a real
model) are tested in tests/lora/test_multi_adapter.py; here each reading gets tables built by hand,
so every number and direction its sentence states is known in advance.
"""

from __future__ import annotations

import pandas as pd
import pytest

from workbench.lessons import many_adapters as ma


def test_memory_findings_read_the_last_row():
    memory = pd.DataFrame({"adapters": [1, 2], "base_bytes": [4_000_000] * 2, "adapter_bytes": [50_000, 100_000],
                           "one_base_bytes": [4_050_000, 4_100_000], "merged_copies_bytes": [4_000_000, 8_000_000],
                           "ratio": [0.99, 8_000_000 / 4_100_000]})
    found = ma.memory_findings(memory, {"question": 50_000, "negation": 50_000})
    assert (found.adapters, found.base_bytes, found.merged_copies_bytes) == (2, 4_000_000, 8_000_000)
    assert found.markdown() == (
        "The base holds **4.00 MB**; the adapters hold **question** 50 kB (1.2 % of the base), **negation** 50 kB "
        "(1.2 % of the base). Serving all 2 from one base takes **4.10 MB**; 2 merged copies take **8.00 MB**, 1.95 "
        "times as much. Each further adapter costs its own A and B, each further merged copy the whole model.")


def test_score_findings_each_adapter_only_its_own_task():
    scores = pd.DataFrame({"(base)": [0.0, 0.05], "question": [1.0, 0.0], "negation": [0.1, 0.95]},
                          index=pd.Index(["question", "negation"], name="task"))
    found = ma.score_findings(scores)
    assert found.own == {"question": 1.0, "negation": 0.95} and found.base_max == 0.05 and found.others_max == 0.1
    assert found.each_only_its_own
    assert found.markdown() == ("Each adapter on its own task: **question** 1.00, **negation** 0.95; the base model "
                                "scores 0.05 at most on any task, and on another adapter's task an adapter scores 0.10 "
                                "at most: each fine-tune does its own task, and only its own.")
    leaky = ma.score_findings(scores.assign(question=[1.0, 0.3]))
    assert not leaky.each_only_its_own and leaky.markdown().endswith("an adapter scores 0.30 at most.")


def test_mixed_findings_count_equal_answers_and_adapters():
    same = pd.DataFrame({"equal": [True, True, False, True]})
    found = ma.mixed_findings(same, ["a", None, "b", "a"])
    assert (found.equal, found.rows, found.adapters) == (3, 4, 2)
    assert found.markdown() == ("**3 of 4** answers of the mixed batch equal the adapter's answer alone (2 adapters and "
                                "the base model in one batch).")


@pytest.mark.parametrize("one_at_a_time, verdict, says", [
    ([0.30, 0.32, 0.31], "faster", "the mixed batch was faster: it runs one forward pass per step"),
    ([0.10, 0.11, 0.12], "slower", "the mixed batch was slower here"),
    ([0.20, 0.21, 0.19], "same", "about the same time: the difference is within what a busy machine varies by"),
])
def test_latency_findings_verdict_within_a_band(one_at_a_time, verdict, says):
    lat = ma.Latency(mixed=[0.20, 0.19, 0.21], one_at_a_time=one_at_a_time)
    found = ma.latency_findings(lat, ["a", "b", None, "a"])
    assert found.groups == 3 and found.verdict == verdict
    text = found.markdown()
    assert text.startswith(f"Median of 3 rounds: mixed batch **200 ms**, one adapter at a time (**3** groups) "
                           f"**{1000 * lat.one_at_a_time_median:.0f} ms**: one at a time took **{lat.ratio:.2f}×**")
    assert says in text and f"({found.cpus} logical CPUs" in text


def test_mixed_batch_mixes_every_task_and_one_base_row(tmp_path):
    tasks = {"question": "skill", "negation": str(ma.write_task(tmp_path / "negation", "negation"))}
    prompts, names = ma.mixed_batch(tasks, per_task=2)
    assert len(prompts) == len(names) == 5 and sorted(names, key=str) == sorted(["question"] * 2 + ["negation"] * 2 + [None], key=str)
    assert all(a != b for a, b in zip(names, names[1:]))  # neighbouring rows use different adapters
    with pytest.raises((ValueError, TypeError)):
        ma.mixed_batch(tasks, per_task=0)


def test_memory_figure_is_drawn_in_the_house_colours():
    """Issue 18's leftover: the serving figure's bars take the house palette, not colours of their own."""
    from matplotlib.colors import to_hex

    from workbench.lessons.many_adapters import memory_figure
    from workbench.util.units import MB
    from workbench.viz.style import FULL_COLOR, MEMORY_COMPONENTS, RUN_PALETTE

    table = pd.DataFrame({"adapters": [1, 2], "base_bytes": [4 * MB] * 2, "adapter_bytes": [MB // 10, MB // 5],
                          "merged_copies_bytes": [4 * MB, 8 * MB]})
    ax = memory_figure(table).axes[0]
    colours = {to_hex(p.get_facecolor()) for p in ax.patches}
    assert colours == {MEMORY_COMPONENTS[0][2], RUN_PALETTE[1], to_hex(FULL_COLOR)}
    assert [round(p.get_height(), 3) for p in ax.patches[-2:]] == [4.0, 8.0]  # merged copies, in MB
    assert ax.get_ylabel().startswith("weights (MB")
