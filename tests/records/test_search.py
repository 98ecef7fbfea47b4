"""``wb.search``: trials are stored runs, hopeless ones stop early and say so, the figure marks them."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna")

import workbench as wb  # noqa: E402
from workbench.records.search import STOPPED_BY_SEARCH, LogUniform, search  # noqa: E402
from workbench.ui.cli import build_parser, main  # noqa: E402

CFG = dict(steps=4, eval_every=2)


class OddTrialsStop(optuna.pruners.BasePruner):
    """A pruner whose verdict is known in advance: every odd trial is stopped at its first evaluation."""

    def prune(self, study, trial):
        return trial.number % 2 == 1


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    runs = tmp_path_factory.mktemp("search") / "runs"
    result = search(wb.preset("tiny", **CFG), {"rank": [1, 4], "lr": wb.loguniform(1e-4, 1e-2)}, trials=3,
                    metric="eval_accuracy", runs_dir=runs, fresh_process=False, pruner=OddTrialsStop())
    return result, runs


def test_stopped_trials_end_early_and_are_recorded_as_stopped_by_the_search(searched):
    result, runs = searched
    assert result.pruned == [False, True, False]
    stopped = result.results[1]
    assert stopped.status == "stopped" and len(stopped.history) == 2  # stopped after its evaluation at step 2
    assert stopped.message.startswith(f"{STOPPED_BY_SEARCH} after 2 of 4 steps: eval_accuracy ")
    stored = {r.run_id: r for r in wb.load_runs(runs)}
    assert stored[stopped.run_id].message == stopped.message and stored[stopped.run_id].status == "stopped"
    assert [len(r.history) for r in result.results] == [4, 2, 4] and result.steps_used == 10


def test_each_trial_is_the_config_with_its_settings_and_the_best_is_the_best_finished(searched):
    result, _ = searched
    for params, run, value in zip(result.params, result.results, result.values):
        assert run.config == wb.preset("tiny", **CFG).with_changes(**params)
        assert params["rank"] in (1, 4) and 1e-4 <= params["lr"] <= 1e-2
        assert value == run.last("eval_accuracy")
    finished = [i for i in range(3) if not result.pruned[i]]
    assert result.best_index == max(finished, key=lambda i: result.values[i])
    table = result.table
    assert list(table["trial"]) == [0, 1, 2] and list(table["stopped_by_search"]) == [False, True, False]
    assert list(table["run_id"]) == [r.run_id for r in result.results]


def test_the_figure_has_a_panel_per_setting_and_crosses_for_stopped_trials(searched):
    result, _ = searched
    fig = result.figure()
    axes = fig.get_axes()
    assert [ax.get_title(loc="left") for ax in axes] == ["rank", "lr"]
    for ax in axes:
        crosses = [c for c in ax.collections if c.get_label() == STOPPED_BY_SEARCH]
        assert len(crosses) == 1 and len(crosses[0].get_offsets()) == 1
        assert ax.get_xscale() == "log"
    assert "3 trials, 1 stopped early, 10 steps in all" in fig._suptitle.get_text()


def test_a_budget_of_steps_caps_the_trials(tmp_path):
    result = search(wb.preset("tiny", steps=2, eval_every=1), {"rank": [1, 2]}, trials=5, metric="eval_loss",
                    budget_steps=4, runs_dir=None, fresh_process=False, pruner=OddTrialsStop())
    # trial 0: 2 steps; trial 1: stopped after 1; trial 2 would need 2 more than the 1 left.
    assert [len(r.history) for r in result.results] == [2, 1] and result.steps_used == 3


def test_the_default_pruner_judges_a_trial_from_its_second_evaluation(monkeypatch):
    made = []
    create = optuna.create_study
    monkeypatch.setattr(optuna, "create_study", lambda **kw: made.append(kw["pruner"]) or create(**kw))
    search(wb.preset("tiny", steps=2, eval_every=1), {"rank": [1]}, trials=1, metric="eval_loss", runs_dir=None,
           fresh_process=False)
    search(wb.preset("tiny", steps=2, eval_every=0), {"rank": [1]}, trials=1, metric="eval_loss", runs_dir=None,
           fresh_process=False, min_evals=3)
    assert [type(p).__name__ for p in made] == ["MedianPruner", "MedianPruner"]
    assert [(p._n_warmup_steps, p._n_startup_trials) for p in made] == [(2, 2), (2, 2)]


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(space={"rnak": [1]}), ValueError, "space: 'rnak' is not a setting; the settings are: "),
    (dict(space={"rank": [0, 2]}), ValueError, "rank must be a positive integer, got 0"),
    (dict(space={"rank": []}), ValueError, "space: 'rank' must be a non-empty list of values"),
    (dict(space={}), ValueError, "space must be a dict of settings to search"),
    (dict(space={"rank": [2]}, metric="bleu"), ValueError, "metric must be one of eval_exact_match, eval_accuracy"),
    (dict(space={"rank": [2]}, metric="eval_exact_match"), ValueError,
     "eval_exact_match is measured on a language model's runs (task 'causal-lm')"),
    (dict(space={"rank": [2]}, budget_steps=3), ValueError, "budget_steps 3 is less than one trial's 4 steps"),
    (dict(space={"rank": [2]}, trials=0), ValueError, "trials must be a positive integer, got 0"),
    (dict(space={"rank": [2]}, min_evals=0), ValueError, "min_evals must be a positive integer, got 0"),
])
def test_bad_searches_are_refused_before_any_run(tmp_path, kwargs, error, message):
    kwargs = {"metric": "eval_accuracy"} | kwargs
    with pytest.raises(error) as e:
        search(wb.preset("tiny", **CFG), runs_dir=tmp_path / "runs", **kwargs)
    assert message in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_range_errors():
    with pytest.raises(ValueError, match=r"loguniform needs 0 < low < high, got \(0\.0, 1\.0\)"):
        wb.loguniform(0, 1)
    with pytest.raises(ValueError, match=r"uniform needs low < high, got \(2\.0, 1\.0\)"):
        wb.uniform(2, 1)


def test_the_search_command(tmp_path, capsys, monkeypatch):
    from workbench.engine import launch

    monkeypatch.setattr(launch, "use_fresh_process", lambda cfg, fresh_process=None: False)
    args = build_parser().parse_args(["search", "recipes/tiny.yaml", "--space", "rank=1,4", "--space",
                                      "lr=loguniform:1e-4:1e-2", "--space", "targets=query,value"])
    assert args.space == [("rank", [1, 4]), ("lr", LogUniform(1e-4, 1e-2)), ("targets", ["query", "value"])]
    out = tmp_path / "out"
    code = main(["search", "recipes/tiny.yaml", "--steps", "2", "--eval-every", "1", "--space", "rank=1,2",
                 "--trials", "2", "--metric", "eval_loss", "--runs-dir", str(tmp_path / "runs"), "--out", str(out),
                 "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "2 trials, 0 stopped by the search, 4 steps in all; best eval_loss " in printed
    assert (out / "trials.csv").is_file() and (out / "search.png").is_file()
    assert len(wb.runs(tmp_path / "runs")) == 2


@pytest.mark.parametrize("argv, message", [
    (["--space", "rank"], "expected NAME=VALUES (rank=2,4,8 or lr=loguniform:1e-4:1e-2), got 'rank'"),
    (["--space", "lr=loguniform:a:b"], "'lr=loguniform:a:b': expected loguniform:LOW:HIGH with numbers"),
    ([], "the following arguments are required: --space"),
])
def test_search_command_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["search", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_search_command_value_errors(capsys, tmp_path):
    code = main(["search", "--preset", "tiny", "--space", "rank=0", "--metric", "eval_accuracy",
                 "--runs-dir", str(tmp_path / "runs")])
    assert code == 2 and "error: rank must be a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_the_first_trial_is_the_configs_own_settings_where_they_lie_in_the_space(tmp_path):
    cfg = wb.preset("tiny", **CFG).with_changes(lr=3e-3)
    rank = cfg.lora.rank
    result = search(cfg, {"rank": [rank, rank + 1], "lr": wb.loguniform(1e-4, 1e-2), "alpha": [1.0, 2.0]}, trials=1,
                    metric="eval_accuracy", runs_dir=tmp_path / "runs", fresh_process=False)
    first = result.params[0]
    assert first["rank"] == rank and first["lr"] == 3e-3  # cfg's own: inside the space
    assert first["alpha"] in (1.0, 2.0) and cfg.lora.alpha not in (1.0, 2.0)  # outside it: sampled
    off = search(cfg, {"lr": wb.loguniform(1e-4, 1e-2)}, trials=1, metric="eval_accuracy", seed=1,
                 runs_dir=tmp_path / "runs2", fresh_process=False, start_at_config=False)
    assert off.params[0]["lr"] != 3e-3
