"""The heterogeneity measure on a shipped calibration whose error table is changed in known ways."""

import copy

import numpy as np
import pytest

from layercache.calibrate import Calibration
from layercache.heterogeneity import PHASES, heterogeneity, phases
from layercache.models.registry import shipped_calibration


@pytest.fixture(scope="module")
def cal():
    return Calibration.load(shipped_calibration("tiny", 30, 4))


def test_phases_split_the_steps_after_the_first_into_thirds():
    whole, early, middle, late = phases(10)
    assert whole.tolist() == list(range(1, 10))
    assert early.tolist() + middle.tolist() + late.tolist() == whole.tolist() and len(early) == 3


def test_ratio_is_the_least_over_the_most_stable_groups_plain_error(cal):
    plain = cal.candidates.index(("slope", 1))
    changed = copy.copy(cal)
    changed.errors = cal.errors.copy()
    changed.errors[:, :, 1, plain] = np.array([0.1, 0.1, 0.2, 0.4])[None, :]   # group 3 four times group 0
    measure = heterogeneity(changed)
    assert measure.ratio == pytest.approx(4.0)
    assert measure.plain_error.shape == (len(PHASES), 4)
    assert np.allclose(measure.plain_error[:, 3], 0.4)
    assert "least stable group, 3" in measure.summary() and "most stable, 0" in measure.summary()


def test_best_slope_error_is_the_least_slope_with_k_from_2(cal):
    measure = heterogeneity(cal)
    slopes = [c for c, (kind, k) in enumerate(cal.candidates) if kind == "slope" and k >= 2]
    expected = np.nanmean(np.nanmin(cal.errors[1:, :, 1, slopes], axis=2), axis=0)
    assert np.allclose(measure.slope_error[0], expected)
    assert measure.groups == [(0, 2), (3, 5), (6, 8), (9, 11)]
    assert np.all(measure.slope_error[0] < measure.plain_error[0])   # this model's residuals do move linearly


def test_the_sentence_names_the_stable_group_or_says_there_is_none(cal):
    alike = heterogeneity(cal)   # the bundled model: ratio about 1.2
    assert alike.sentence().startswith("The groups behave alike") and "early steps change" in alike.sentence()
    plain = cal.candidates.index(("slope", 1))
    changed = copy.copy(cal)
    changed.errors = cal.errors.copy()
    changed.errors[:, :, 1, plain] = np.array([0.3, 0.1, 0.2, 0.23])[None, :]
    measure = heterogeneity(changed)
    assert measure.ranks() == [1, 2, 3, 0]
    assert measure.sentence().startswith("Group 1 (blocks 3–5) is 3.0× more stable than group 0 (blocks 0–2)")
    rows = [line for line in measure.table().splitlines() if line.startswith("| ") and "blocks" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 2", "| 3", "| 0"]   # most stable first, ranked


def test_explore_colours_each_step_relative_to_its_mean():
    from layercache.studio import viz

    fig = viz.velocity_figure(np.array([[1.0, 3.0], [0.1, 0.3], [np.nan, np.nan]]))
    z = np.array(fig.data[0].z, dtype=float)   # groups x steps
    assert np.allclose(z[:, :2], [[0.5, 0.5], [1.5, 1.5]]) and np.isnan(z[:, 2]).all()
    assert fig.data[0].zmid == 1.0 and "step's mean" in fig.layout.title.text
