"""The confirmation stage (search/confirm.py) and the warm start from an earlier sweep (search/warm_start.py):
the confirmed rung, a lucky trial losing its lead, the board's marks, and the recipes a warm start enqueues."""
from __future__ import annotations

import json

import optuna
import pytest

from alloy.errors import AlloyError
from alloy.search.confirm import confirm_sweep, decide_best, leads_beyond_intervals
from alloy.search.leaderboard import Leaderboard, read_leaderboard, render_board, select_rows
from alloy.search.records import SweepRecords
from alloy.search.runner import make_runner
from alloy.search.space import load_space, unit_from_simplex
from alloy.search.warm_start import warm_start_points
from tests.spaces import space_dict, write_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
METRIC = "aime24/exact_match"


def point(default_mix, routed_mix, threshold) -> dict:
    u, v = unit_from_simplex(default_mix), unit_from_simplex(routed_mix)
    return {"default.weights.s0": u[0], "default.weights.s1": u[1], "routed_experts.weights.s0": v[0],
            "routed_experts.weights.s1": v[1], "routed_experts.threshold": threshold}


def board_row(space, trial: int, params: dict, score: float, rung: int = 2, status: str = "ok",
              reference: str | None = None) -> dict:
    candidate = space.candidate(params)
    return {"trial": trial, "trial_id": f"t{trial}", "recipe_hash": candidate.recipe_hash,
            "recipe": candidate.canonical_json, "status": status, "error": None, "rung": rung,
            "n_samples": space.evaluation.rungs[rung], "cached": False, "reference": reference, METRIC: score,
            "finished_at": 0.0}


def write_board(space, folder, rows) -> SweepRecords:
    """The rows stored as a sweep stores them (in a study), and the leaderboard view written from them."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'records.db'}")
    optuna.create_study(study_name="records", storage=storage)
    records = SweepRecords(storage, "records")
    records.set_schema([{"metric": METRIC, "direction": "maximize"}], space.evaluation.rungs)
    for row in rows:
        records.put(row)
    Leaderboard.from_records(folder / "leaderboard.parquet", records).write()
    return records



def test_a_lead_on_the_same_questions_is_tested_paired(tmp_path):
    """With per-question values the lead is judged on the paired gap: 26 against 20 of 40 right is
    within the two intervals side by side, but beyond the paired interval when the winner also answers
    every question the parent answers, and not when it wins 13 and loses 7."""
    from alloy.evaluation.intervals import wilson

    space = load_space(write_space(tmp_path, space_dict()))

    def scored(questions, reference=None):
        lo, hi = wilson(sum(questions), len(questions))
        return {METRIC: sum(questions) / len(questions), f"{METRIC}.lo": lo, f"{METRIC}.hi": hi,
                f"{METRIC}.questions": questions, "reference": reference}

    parent = scored([1.0] * 20 + [0.0] * 20, "parent:A")
    consistent = scored([1.0] * 26 + [0.0] * 14)
    noisy = scored([0.0] * 7 + [1.0] * 26 + [0.0] * 7)
    assert consistent[f"{METRIC}.lo"] < parent[f"{METRIC}.hi"]
    assert leads_beyond_intervals(space, consistent, parent) and not leads_beyond_intervals(space, noisy, parent)
    unpaired = {k: v for k, v in consistent.items() if not k.endswith(".questions")}
    assert not leads_beyond_intervals(space, unpaired, parent)  # without them: the separate intervals
    rows = [dict(parent), dict(consistent)]
    decide_best(space, rows)
    assert rows[1]["best"] and rows[1]["clear_lead"] is True
    write_board(space, tmp_path, [
        {**board_row(space, 0, point([1, 0, 0], [1, 0, 0], 0.01), 0.5), **rows[0], "rung": 3, "n_samples": 40},
        {**board_row(space, 1, point([0.2, 0.5, 0.3], [0.1, 0.1, 0.8], 0.01), 0.65), **rows[1], "rung": 3,
         "n_samples": 40}])
    table = read_leaderboard(tmp_path / "leaderboard.parquet")
    assert table.column(f"{METRIC}.questions").to_pylist() == [parent[f"{METRIC}.questions"],
                                                               consistent[f"{METRIC}.questions"]]
    text = render_board(select_rows(table, top=1), table)
    assert "*" in text.splitlines()[1].split() and "within the 95% intervals" not in text
    # the winner's paired gap to the parent, with the parent's row not among those shown
    assert f"trial 1 − parent:A on the same questions (95% interval): {METRIC} +0.150 [+0.0" in text
    from alloy.search.report import render_report

    assert "The winner after confirmation against each parent" in render_report(table)
    with pytest.raises(AlloyError, match="per-question values; sort by the score"):
        select_rows(table, sort=f"{METRIC}.questions")


# --------------------------------------------------------------------------------------------------
def test_confirmation_rung_changes_a_lucky_winner(tmp_path, capsys):
    data = space_dict()
    data["evaluation"]["synthetic"]["noise"] = "binomial"
    data["search"].update(start=["parents"], confirm={"top": 2, "samples": 400})
    space = load_space(write_space(tmp_path, data))
    runner = make_runner(space, tmp_path)
    truly_best = point([0.2, 0.5, 0.3], [0.1, 0.1, 0.8], 0.01)                 # the synthetic optimum
    mediocre = point([0.6, 0.2, 0.2], [0.5, 0.3, 0.2], 0.2)
    parent_a = dict(space.start_points())["parent:A"]
    truth = {name: runner.true_score(space.candidate(p).recipe) for name, p in (("best", truly_best), ("so-so", mediocre))}
    assert truth["best"] > truth["so-so"] + 0.2
    # at the last rung the mediocre recipe drew lucky (0.94) and the best one unlucky (0.69)
    rows = [board_row(space, 0, parent_a, 0.3, reference="parent:A"), board_row(space, 1, mediocre, 0.94),
            board_row(space, 2, truly_best, 0.69), board_row(space, 3, mediocre, 0.4, rung=0, status="pruned")]
    records = write_board(space, tmp_path, rows)
    assert select_rows(read_leaderboard(tmp_path))[0]["trial"] == 1          # the lucky draw leads

    confirmed = confirm_sweep(space, tmp_path, records)
    assert "best after confirmation: trial 2" in capsys.readouterr().out
    assert sorted(r["trial"] for r in confirmed) == [0, 1, 2]                # top 2, then the parent
    table = read_leaderboard(tmp_path)
    rows = {(r["trial"], r["rung"]): r for r in table.to_pylist()}
    assert {k for k, r in rows.items() if r["rung"] == 3} == {(0, 3), (1, 3), (2, 3)}   # the confirmed rung
    assert all(rows[(t, 3)]["n_samples"] == 400 and rows[(t, 3)]["latest"] for t in (0, 1, 2))
    assert rows[(2, 3)]["best"] and not rows[(1, 3)]["best"] and not rows[(0, 3)]["best"]
    assert rows[(2, 3)]["clear_lead"] is True                                # far above parent A on 400 questions
    assert rows[(2, 3)][f"{METRIC}.lo"] < rows[(2, 3)][METRIC] < rows[(2, 3)][f"{METRIC}.hi"]
    assert rows[(2, 3)]["pareto"] == rows[(2, 2)]["pareto"]
    best_first = select_rows(table)
    assert best_first[0]["trial"] == 2
    text = render_board(best_first, table)
    assert "best" in text.splitlines()[0] and "[" in text.splitlines()[1]   # the mark and the interval
    # a second run (a resumed sweep) keeps the stored confirmation as it is
    again = confirm_sweep(space, tmp_path, records)
    assert [(r["trial"], r["best"], r["finished_at"]) for r in again] == \
        [(r["trial"], r["best"], r["finished_at"]) for r in confirmed]


def test_sampled_confirmation_draws_new_answers(tmp_path, capsys):
    """With sampled answers every confirmed question gets new draws, at repeat indices the search never used."""
    data = space_dict()
    data["evaluation"].update(repeats=2)
    data["evaluation"]["synthetic"]["noise"] = "binomial"
    data["search"].update(start=["parents"], confirm={"top": 4, "samples": 40, "repeats": 3})
    space = load_space(write_space(tmp_path, data))
    runner = make_runner(space, tmp_path)
    # four candidates, so that the search's draws and the new ones cannot give the same scores by chance
    candidates = [space.candidate(point([0.2, 0.5, 0.3], [0.1, 0.1, 0.8], 0.01 * (1 + i))) for i in range(4)]
    rows = [board_row(space, i, c.params, runner.run(c.recipe, c.recipe_hash, 16)[METRIC])
            for i, c in enumerate(candidates)]
    confirmed = {row["recipe_hash"]: row for row in confirm_sweep(space, tmp_path, write_board(space, tmp_path, rows))}
    assert "4 candidates on 40 samples, 3 new answers each" in capsys.readouterr().out
    assert set(confirmed) == {c.recipe_hash for c in candidates}
    searched_draws = []
    for c in candidates:
        assert confirmed[c.recipe_hash][METRIC] == runner.run(c.recipe, c.recipe_hash, 40, range(2, 5))[METRIC]
        searched_draws.append(runner.run(c.recipe, c.recipe_hash, 40)[METRIC] == confirmed[c.recipe_hash][METRIC])
        assert (tmp_path / "cache" / c.recipe_hash / "40.r2-4.json").is_file()
        assert not (tmp_path / "cache" / c.recipe_hash / "40.json").exists()  # the search's draws: 0 and 1
    assert not all(searched_draws)


def test_greedy_confirmation_reuses_answers_and_refuses_new_repeats(tmp_path):
    from alloy.search.confirm import confirmation_repeats, questions_scored

    space = load_space(write_space(tmp_path, space_dict()))
    assert confirmation_repeats(space) is None  # greedy answers: a new draw is the same answer
    data = space_dict()
    data["search"]["confirm"] = {"top": 2, "repeats": 2}
    with pytest.raises(AlloyError, match="search.confirm.repeats: 2 new answers per question, but the evaluation "
                                         "decodes greedily"):
        load_space(write_space(tmp_path, data))
    data["evaluation"]["generation"] = {"temperature": 0.7}
    assert confirmation_repeats(load_space(write_space(tmp_path, data))) == range(1, 3)
    assert questions_scored({"aime24/n_samples": 30, "gpqa_diamond/n_samples": 40, METRIC: 0.5}, 96) == 40
    assert questions_scored({METRIC: 0.5}, 96) == 96


def test_confirmation_without_new_questions_is_reported(tmp_path, capsys):
    from alloy.search.confirm import _warn_without_new_questions

    space = load_space(write_space(tmp_path, space_dict()))
    last = space.evaluation.rungs[-1]
    _warn_without_new_questions(space, [{"aime24/n_samples": last, "gpqa_diamond/n_samples": last - 1}])
    assert "already scored at the last rung" in capsys.readouterr().out
    _warn_without_new_questions(space, [{"aime24/n_samples": last + 1, "gpqa_diamond/n_samples": last}])
    _warn_without_new_questions(space, [{METRIC: 0.5}])  # a runner that does not count questions
    assert capsys.readouterr().out == ""


def test_winner_within_the_intervals_is_marked(tmp_path):
    space = load_space(write_space(tmp_path, space_dict()))
    parent = {METRIC: 0.50, f"{METRIC}.lo": 0.40, f"{METRIC}.hi": 0.60, "reference": "parent:A"}
    close = {METRIC: 0.58, f"{METRIC}.lo": 0.48, f"{METRIC}.hi": 0.68, "reference": None}
    far = {METRIC: 0.75, f"{METRIC}.lo": 0.65, f"{METRIC}.hi": 0.85, "reference": None}
    assert not leads_beyond_intervals(space, close, parent) and leads_beyond_intervals(space, far, parent)
    rows = [dict(parent), dict(close)]
    decide_best(space, rows)
    assert rows[1]["best"] and rows[1]["clear_lead"] is False and rows[0]["clear_lead"] is None
    write_board(space, tmp_path, [
        {**board_row(space, 0, point([1, 0, 0], [1, 0, 0], 0.01), 0.5), **rows[0], "rung": 3, "n_samples": 64},
        {**board_row(space, 1, point([0.2, 0.5, 0.3], [0.1, 0.1, 0.8], 0.01), 0.58), **rows[1], "rung": 3,
         "n_samples": 64}])
    table = read_leaderboard(tmp_path / "leaderboard.parquet")
    text = render_board(select_rows(table), table)
    assert text.splitlines()[1].split()[0] == "1" and "~" in text.splitlines()[1].split()
    assert "within the 95% intervals" in text


# --------------------------------------------------------------------------------------------------
def earlier_sweep(tmp_path, space, scored: list[tuple[dict, float, str]]):
    """A finished sweep folder `old/`: its Optuna study and leaderboard hold the given trials."""
    folder = tmp_path / "old"
    folder.mkdir()
    url = f"sqlite:///{folder / 'study.db'}"
    study = optuna.create_study(study_name="alloy", storage=url, direction="maximize")
    rows = []
    for number, (params, score, status) in enumerate(scored):
        study.enqueue_trial(params)
        trial = study.ask()
        space.define_by_run(trial)
        study.tell(trial, score if status == "ok" else None,
                   state=optuna.trial.TrialState.COMPLETE if status == "ok" else optuna.trial.TrialState.PRUNED)
        rows.append(board_row(space, number, params, score, rung=2 if status == "ok" else 0, status=status))
    write_board(space, folder, rows)
    (folder / "sweep.json").write_text(json.dumps({"storage": url, "study_name": "alloy"}))
    return folder


def test_warm_start_enqueues_the_earlier_sweeps_best_recipes_that_fit(tmp_path):
    from alloy.search.sweep import SweepSearch

    old_space = load_space(write_space(tmp_path, space_dict()))
    a = point([0.3, 0.3, 0.4], [0.2, 0.2, 0.6], 0.02)
    b = point([0.2, 0.5, 0.3], [0.1, 0.1, 0.8], 0.01)
    outside = point([0.1, 0.8, 0.1], [0.3, 0.3, 0.4], 0.9)                  # threshold beyond the new range
    lucky_pruned = point([0.5, 0.4, 0.1], [0.4, 0.4, 0.2], 0.05)
    earlier_sweep(tmp_path, old_space, [(a, 0.5, "ok"), (b, 0.8, "ok"), (outside, 0.9, "ok"),
                                        (lucky_pruned, 0.99, "pruned")])
    data = space_dict()
    data["groups"]["routed_experts"]["parameters"]["threshold"]["high"] = 0.5
    data["search"].update(sampler="cmaes", start=["uniform"], warm_start={"from": "old", "top": 3})
    space = load_space(write_space(tmp_path, data))
    warm = warm_start_points(space)
    assert warm == [b, a]                                                    # best first; misfits and pruned left out

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'new.db'}")
    search = SweepSearch(space, storage, "alloy", warm=warm)
    queued = [t.system_attrs["fixed_params"] for t in search.study.get_trials(deepcopy=False)
              if t.state == optuna.trial.TrialState.WAITING]
    assert queued == [space.start_points()[0][1], b, a]
    resumed = SweepSearch(space, storage, "alloy", enqueue_start=False)      # resume enqueues nothing again
    assert len(resumed.study.get_trials(deepcopy=False)) == 3


def test_warm_start_from_a_missing_sweep_fails_before_ray(tmp_path):
    from alloy.search.sweep import run_sweep

    data = space_dict()
    data["search"]["warm_start"] = "nowhere"
    with pytest.raises(AlloyError, match="search.warm_start: no sweep 'nowhere'"):
        run_sweep(write_space(tmp_path, data), tmp_path / "out")
    assert not (tmp_path / "out").exists()
