"""``python -m workbench plan``: the planner's numbers and verdicts from the shell, and its errors."""

from __future__ import annotations

import pytest

from workbench.__main__ import main
from workbench.engine.models import resolve_model_name
from workbench.lessons.planner import plan
from workbench.util.units import GB


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_of_the_bundled_story_lm_prints_the_breakdown_and_the_verdicts(capsys):
    code, out, _ = run(capsys, "plan", "story-lm", "--seq-len", "64", "--batch-size", "4", "--rank", "4",
                       "--targets", "query,value", "--gpus", "1,80")
    assert code == 0
    p = plan(resolve_model_name("story-lm"), rank=4, targets=("query", "value"), seq_len=64, batch_size=4,
             device="cuda", name="story-lm")
    total = p.lora.memory.total
    assert out.startswith(p.summary())
    for row in p.breakdown().itertuples(index=False):
        assert f"  {row.component:<50} {row.GB:>10.3f}   {row.how}" in out
    assert f"will it fit a 1 GB GPU: fits ({total / GB:.3g} GB of 1 GB, tensors alone)" in out
    assert "will it fit a 80 GB GPU: fits" in out and "assumptions:\n  - one training step" in out


def test_a_plan_that_does_not_fit_says_so(capsys):
    code, out, _ = run(capsys, "plan", "qwen2.5-0.5b", "--method", "full", "--seq-len", "4096", "--gpus", "1,80")
    p = plan("qwen2.5-0.5b", method="full", seq_len=4096, device="cuda")
    assert code == 0 and p.full.memory.total > GB
    assert f"will it fit a 1 GB GPU: does not fit ({p.full.memory.total / GB:.3g} GB of 1 GB" in out
    assert "memory of one training step, full fine-tuning" in out


@pytest.mark.parametrize("argv, message", [
    (["no-such-model-here"], "error: unknown architecture 'no-such-model-here'"),
    (["story-lm", "--method", "full", "--rank", "4"], "error: --rank: LoRA settings apply to --method lora only"),
    (["story-lm", "--gpus", "0"], "error: --gpus must be positive sizes in GB, got [0]"),
    (["story-lm", "--seq-len", "0"], "error: seq_len must be a positive integer, got 0"),
    (["story-lm", "--rank", "0"], "error: rank must be a positive integer, got 0"),
])
def test_plan_errors_are_the_planner_s_own(capsys, argv, message):
    code, _, err = run(capsys, "plan", *argv)
    assert code == 2 and err.startswith(message), err


def test_plan_help_and_a_bad_choice(capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", "--help"])
    assert e.value.code == 0 and "--quantize {nf4,int8}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["plan", "gpt2", "--quantize", "fp4"])
    assert e.value.code == 2 and "invalid choice: 'fp4'" in capsys.readouterr().err.replace('"', "'")
