"""The schedule editor's edits and checks (layercache/studio/editor.py) and the lesson's settings: pure functions."""

import json

import pytest

from layercache.predictors import MIN_K, PREDICTORS
from layercache.schedule import Cell, Schedule
from layercache.studio import editor, lesson


def schedule_json(steps=6, groups=3):
    cells = [[Cell(True)] * groups for _ in range(steps)]
    cells[2] = [Cell(False, "slope", 2)] * groups
    return Schedule("Model@abc", [1 - i / steps for i in range(steps)], [0, 2, 4][:groups], 6, [1 / groups] * groups,
                    cells, {"method": "planner"}).to_json()


def test_a_click_toggles_one_cell_or_the_whole_step():
    before = schedule_json()
    after = editor.toggle(before, 3, 1, False, "slope", 3)
    cells = Schedule.from_json(after).cells
    assert cells[3][1] == Cell(False, "slope", 3) and cells[3][0].compute and cells[3][2].compute
    assert Schedule.from_json(after).compute_fraction < Schedule.from_json(before).compute_fraction
    back = editor.toggle(after, 3, 1, False, "slope", 3)
    assert Schedule.from_json(back).cells == Schedule.from_json(before).cells   # toggling twice restores it
    whole = Schedule.from_json(editor.toggle(before, 2, 0, True, "slope", 2)).cells
    assert all(cell.compute for cell in whole[2])   # the reused step 2 computed again, every group
    assert Schedule.from_json(before).cells[2][0] == Cell(False, "slope", 2)   # the input is not mutated


@pytest.mark.parametrize("predictor", PREDICTORS)
def test_every_predictor_can_be_painted_and_labelled(predictor):
    k = max(3, MIN_K[predictor])
    after = editor.toggle(schedule_json(), 3, 1, False, predictor, k)
    assert Schedule.from_json(after).cells[3][1] == Cell(False, predictor, k)
    assert editor.label(Cell(False, predictor, k)).endswith(str(k))
    editor.table(after)   # every cell has a label


@pytest.mark.parametrize("step, group, predictor, k, words", [
    (0, 0, "slope", 2, "step 0"), (9, 0, "slope", 2, "click a cell"), (2, 5, "slope", 2, "click a cell"),
    (3, 0, "quadratic", 2, "K ≥ 3"), (3, 0, "magic", 2, "predictor"), (3, 0, "mean", 1, "K ≥ 2")])
def test_edits_that_are_not_allowed_say_why(step, group, predictor, k, words):
    with pytest.raises(ValueError, match=words):
        editor.toggle(schedule_json(), step, group, False, predictor, k)
    with pytest.raises(ValueError, match="no schedule"):
        editor.toggle(None, 3, 0, False, "slope", 2)


def test_the_map_shows_groups_as_rows_and_steps_as_columns():
    frame = editor.table(schedule_json()).data
    assert list(frame.columns) == ["group", *map(str, range(6))]
    assert frame.iloc[0, 0].startswith("0 (blocks 0–1)") and frame.iloc[1, 3] == "K2" and frame.iloc[1, 1] == "run"
    assert "runs **83%**" in editor.summary(schedule_json()) and "outputs" not in editor.summary(schedule_json())
    outputs = dict(schedule_json(), reuse="outputs")
    assert "predict their outputs" in editor.summary(outputs)
    assert Schedule.from_json(editor.toggle(outputs, 3, 1, False, "slope", 2)).reuse == "outputs"   # an edit keeps it
    assert Schedule.from_json(editor.compute_all(outputs)).reuse == "residuals"   # a fresh map paints residuals
    assert all(cell == "run" for cell in editor.table(editor.compute_all(schedule_json())).data.iloc[:, 1:].values.flat)


def test_a_schedule_for_other_settings_or_a_bad_file_is_refused(tmp_path):
    good = schedule_json()
    assert editor.check_fits(good, "Model@abc", 6, 6, 3).num_steps == 6
    for args, words in [(("Other@x", 6, 6, 3), "made for model"), (("Model@abc", 6, 8, 3), "8 steps"),
                        (("Model@abc", 6, 6, 4), "Groups to 3"), (("Model@abc", 12, 6, 3), "blocks")]:
        with pytest.raises(ValueError, match=words):
            editor.check_fits(good, *args)
    path = tmp_path / "s.json"
    for text, words in [("{nope", "not valid JSON"), ('{"format": "x"}', "not a LayerCache schedule"),
                        (json.dumps({**good, "cells": good["cells"][:2]}), "cells must be")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=words):
            editor.load_upload(path)
    path.write_text(json.dumps(good))
    assert editor.load_upload(path) == good
    assert json.loads(open(editor.write(good, tmp_path / "out")).read()) == good


def test_every_lesson_step_sets_inputs_the_app_has():
    import app

    assert len(lesson.LESSON) == 6
    for step in lesson.LESSON:
        assert set(step.settings) <= set(app.LESSON_INPUTS) and step.tab in ("compare", "explore")
        if "method" in step.settings:
            assert step.settings["method"] in app.METHODS
        if "budget" in step.settings:
            app.check_inputs(**{k: step.settings[k] for k in ("model", "prompt", "seed", "steps", "budget", "groups",
                                                              "max_k", "method")})
