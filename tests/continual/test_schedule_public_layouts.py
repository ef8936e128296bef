"""The continual stage schedule on the multi-placement public layouts: RealWorld 2016 (7 body positions; the
fixture writes waist, forearm, upperarm, chest) and PAMAP2 (hand / chest / ankle IMUs), from fixture files in
their official layouts (tests/fixtures/layouts.py).

A schedule over placements reads all of them with one config, ``data.placement: [..]`` (each placement as the
loader reads it alone, joined into one set); the user's other path, the placements' windows saved as one ``.npz``,
is tested at the end. The tags are the loaders' own: RealWorld's position names (forearm is the LG watch, the
others the Galaxy S4), PAMAP2's ``wrist`` (the hand IMU), ``chest`` and ``ankle``.
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.fixtures import layouts as L

from fedhar.config import load_config
from fedhar.continual import schedule
from fedhar.data.pipeline import load_windows, split_windows
from fedhar.data.splits import split_by_subject
from fedhar.data.windows import WindowSet
from fedhar.errors import ConfigError

RW_PROBANDS = (1, 2, 3, 4, 5)  # 1-3 train, 4 validates, 5 tests
RW_PLACEMENTS = ("waist", "forearm", "upperarm")
PAMAP2_SUBJECTS = (101, 102, 103, 104, 105)  # 101-103 train, 104 validates, 105 tests
PAMAP2_IMUS = ("hand", "chest", "ankle")  # data.placement values; tags wrist, chest, ankle

RW_STAGES = ("continual.stages=[{name: waist, rounds: 2, subjects: [1, 2], placements: [waist]},"
             "{name: arm, rounds: 2, subjects: [2, 3], placements: [forearm, upperarm]}]")  # fmt: skip
PAMAP2_STAGES = ("continual.stages=[{name: hand, rounds: 1, subjects: [101, 102], placements: [wrist]},"
                 "{name: chest, rounds: 1, subjects: [102, 103], placements: [chest]},"
                 "{name: ankle, rounds: 1, subjects: [101, 102, 103], placements: [ankle]}]")  # fmt: skip
#: per stage: (placements, training subjects) of RW_STAGES / PAMAP2_STAGES
RW_EXPECTED = [({"waist"}, {"1", "2"}), ({"forearm", "upperarm"}, {"2", "3"})]
PAMAP2_EXPECTED = [({"wrist"}, {"101", "102"}), ({"chest"}, {"102", "103"}), ({"ankle"}, {"101", "102", "103"})]


def _placements(placements) -> str:
    """The ``data.placement`` override listing ``placements``."""
    return f"data.placement=[{', '.join(placements)}]"


def _split(cfg) -> tuple[WindowSet, WindowSet, WindowSet]:
    """The config's windows (every placement it lists), split by subject; uncached: a module fixture runs
    before the per-test window cache folder is set."""
    return split_by_subject(load_windows(cfg.data, use_cache=False), cfg.data.split, cfg.seed)


@pytest.fixture(scope="module")
def realworld(tmp_path_factory):
    path = L.write_realworld(tmp_path_factory.mktemp("rw"), probands=RW_PROBANDS,
                             positions=("chest", "forearm", "upperarm", "waist"))  # fmt: skip
    return path, _split(rw_cfg(path, _placements(RW_PLACEMENTS)))


@pytest.fixture(scope="module")
def pamap2(tmp_path_factory):
    path = L.write_pamap2(tmp_path_factory.mktemp("pamap2"), subjects=PAMAP2_SUBJECTS)
    return path, _split(pamap2_cfg(path, _placements(PAMAP2_IMUS)))


def rw_cfg(path, *overrides: str):
    return load_config(None, ["data.dataset=realworld", f"data.path={path}", "data.window=64",
                              "data.split.val=[4]", "data.split.test=[5]", *overrides])  # fmt: skip


def pamap2_cfg(path, *overrides: str):
    return load_config(None, ["data.dataset=pamap2", f"data.path={path}", "data.window=64",
                              "data.split.val=[104]", "data.split.test=[105]", *overrides])  # fmt: skip


def _tags(ws: WindowSet, tag: str) -> set[str]:
    return set(getattr(ws, tag).tolist())


def _matching(ws: WindowSet, placements, subjects=None) -> int:
    mask = np.isin(ws.placement, list(placements))
    if subjects is not None:
        mask &= np.isin(ws.subject, list(subjects))
    return int(mask.sum())


def assert_schedule(cfg, train, val, test, expected) -> list[schedule.Domain]:
    """Each stage trains on exactly its placements' windows of its subjects; one domain per stage from the
    held-out subjects under its placements."""
    schedule.check_schedule(cfg, train, val, test)
    assert schedule.num_stages(cfg) == len(expected)
    for s, (placements, subjects) in enumerate(expected):
        held = schedule.stage_train(cfg, train, s)
        assert _tags(held, "placement") == placements and _tags(held, "subject") == subjects, s
        assert len(held) == _matching(train, placements, subjects)  # every such window, none other
        filtered = schedule.stage_filter(cfg, train, s, "train", subjects=True)
        np.testing.assert_array_equal(filtered.x, held.x)
    domains = schedule.domains(cfg, val, test)
    assert [d.name for d in domains] == cfg.continual.stage_names
    for d, (placements, _) in zip(domains, expected):
        assert _tags(d.val, "subject") == _tags(val, "subject") and _tags(d.test, "subject") == _tags(test, "subject")
        assert _tags(d.val, "placement") == _tags(d.test, "placement") == placements
        assert len(d.val) == _matching(val, placements) and len(d.test) == _matching(test, placements)
    return domains


# ---- RealWorld ---------------------------------------------------------------------------------


def test_realworld_the_fixture_has_the_placements_and_subjects(realworld):
    _, (train, val, test) = realworld
    assert _tags(train, "placement") == set(RW_PLACEMENTS)
    assert (_tags(train, "subject"), _tags(val, "subject"), _tags(test, "subject")) == ({"1", "2", "3"}, {"4"}, {"5"})
    assert _tags(train.where(placement=["forearm"]), "device") == {"lg-g-watch-r"}
    assert _tags(train.where(placement=["waist", "upperarm"]), "device") == {"samsung-galaxy-s4"}


def test_realworld_waist_then_arm_with_a_new_subject(realworld):
    path, (train, val, test) = realworld
    cfg = rw_cfg(path, RW_STAGES)
    domains = assert_schedule(cfg, train, val, test, RW_EXPECTED)
    assert _tags(schedule.stage_train(cfg, train, 0), "device") == {"samsung-galaxy-s4"}
    assert _tags(schedule.stage_train(cfg, train, 1), "device") == {"lg-g-watch-r", "samsung-galaxy-s4"}
    assert _tags(domains[1].test, "device") == {"lg-g-watch-r", "samsung-galaxy-s4"}
    assert "3" not in _tags(schedule.stage_train(cfg, train, 0), "subject")  # subject 3 arrives in stage 2
    assert "1" not in _tags(schedule.stage_train(cfg, train, 1), "subject")  # subject 1 left


def test_realworld_a_device_filter_picks_the_watch_on_the_forearm(realworld):
    path, (train, val, test) = realworld
    cfg = rw_cfg(path, "continual.stages=[{name: phone, devices: [samsung-galaxy-s4]},"
                       "{name: watch, devices: [lg-g-watch-r], subjects: [3]}]")  # fmt: skip
    assert_schedule(cfg, train, val, test, [({"waist", "upperarm"}, {"1", "2", "3"}), ({"forearm"}, {"3"})])


def test_realworld_joint_holds_every_stage_once(realworld):
    """joint: the union of the stages' windows. RealWorld's sessions (``walking-1``) and window starts repeat
    across probands and positions, and waist and upperarm share a device, so windows are told apart by what
    they are, not by those tags."""
    path, (train, _, _) = realworld
    cfg = rw_cfg(path, RW_STAGES, "continual.method=joint")
    joint = schedule.stage_train(cfg, train, 0)
    naive = rw_cfg(path, RW_STAGES)
    assert len(joint) == sum(len(schedule.stage_train(naive, train, s)) for s in range(2))
    assert len(schedule.stage_train(cfg, train, 1)) == len(joint)
    overlapping = rw_cfg(path, "continual.method=joint",
                         "continual.stages=[{subjects: [1, 2], placements: [waist]},"
                         "{subjects: [2, 3], placements: [waist, forearm]}]")  # fmt: skip
    waist, forearm = np.isin(train.placement, ["waist"]), np.isin(train.placement, ["forearm"])
    s12, s23 = np.isin(train.subject, ["1", "2"]), np.isin(train.subject, ["2", "3"])
    union = (s12 & waist) | (s23 & (waist | forearm))  # subject 2's waist windows are in both stages: once
    assert len(schedule.stage_train(overlapping, train, 0)) == int(union.sum())


# ---- PAMAP2 ------------------------------------------------------------------------------------


def test_pamap2_the_fixture_has_the_three_imus(pamap2):
    _, (train, val, test) = pamap2
    assert _tags(train, "placement") == {"wrist", "chest", "ankle"} and _tags(train, "device") == {"colibri-imu"}
    assert (_tags(train, "subject"), _tags(val, "subject"), _tags(test, "subject")) == (
        {"101", "102", "103"}, {"104"}, {"105"})  # fmt: skip


def test_pamap2_hand_then_chest_then_ankle(pamap2):
    path, (train, val, test) = pamap2
    cfg = pamap2_cfg(path, PAMAP2_STAGES)
    assert cfg.federated.rounds == 3 and [schedule.stage_of_round(cfg, r) for r in (1, 2, 3)] == [0, 1, 2]
    assert_schedule(cfg, train, val, test, PAMAP2_EXPECTED)


def test_pamap2_joint_keeps_every_imu(pamap2):
    """One device, one session name (``protocol``) and the same window starts for every subject and IMU."""
    path, (train, _, _) = pamap2
    joint = schedule.stage_train(pamap2_cfg(path, PAMAP2_STAGES, "continual.method=joint"), train, 0)
    naive = pamap2_cfg(path, PAMAP2_STAGES)
    assert len(joint) == sum(len(schedule.stage_train(naive, train, s)) for s in range(3))
    assert _tags(joint, "placement") == {"wrist", "chest", "ankle"}


def test_pamap2_class_incremental_stages_across_imus(pamap2):
    path, (train, val, test) = pamap2
    cfg = pamap2_cfg(path, "continual.stages=[{name: lying-hand, placements: [wrist], classes: [lying]},"
                           "{name: walking-ankle, placements: [ankle], classes: [walking]}]")  # fmt: skip
    schedule.check_schedule(cfg, train, val, test)
    names = train.label_names
    assert len(names) == 18  # the model keeps every PAMAP2 class
    domains = schedule.domains(cfg, val, test)
    for s, (placement, activity) in enumerate((("wrist", "lying"), ("ankle", "walking"))):
        held = schedule.stage_train(cfg, train, s)
        assert _tags(held, "placement") == {placement} and {names[i] for i in held.y} == {activity}
        assert len(held) == int((np.isin(train.placement, [placement]) & (train.y == names.index(activity))).sum())
        for part in (domains[s].val, domains[s].test):
            assert _tags(part, "placement") == {placement} and {names[i] for i in part.y} == {activity}


# ---- what the data lacks ------------------------------------------------------------------------


@pytest.mark.parametrize("dataset, stage, message", [
    ("pamap2", "placements: [pocket]",
     "continual.stages[1] (late).placements: ['pocket'] not in the data; its placements: ['ankle', 'chest', 'wrist']"),
    ("pamap2", "placements: [hand]",  # data.placement's name for the IMU, not its tag
     "continual.stages[1] (late).placements: ['hand'] not in the data; its placements: ['ankle', 'chest', 'wrist']"),
    ("pamap2", "subjects: [101, 109]",
     "continual.stages[1] (late).subjects: ['109'] not in the data; its training subjects: ['101', '102', '103']"),
    ("pamap2", "subjects: [104]",  # the validation subject never trains
     "continual.stages[1] (late).subjects: ['104'] not in the data; its training subjects: ['101', '102', '103']"),
    ("realworld", "placements: [waist, shin]",  # a RealWorld position, but not among the loaded ones
     "continual.stages[1] (late).placements: ['shin'] not in the data; its placements: "
     "['forearm', 'upperarm', 'waist']"),
    ("realworld", "subjects: [6]",
     "continual.stages[1] (late).subjects: ['6'] not in the data; its training subjects: ['1', '2', '3']"),
    ("realworld", "subjects: [1], classes: [climbingdown]",  # only proband 2 climbed
     "continual.stages[1] (late): no training window matches the stage's subjects, devices, placements and "
     "classes together"),
    ("realworld", "classes: [climbingdown]",
     "continual.stages[1] (late): the held-out val subjects have no window of this stage's devices, placements "
     "and classes, so its domain cannot be scored"),
])  # fmt: skip
def test_a_stage_naming_what_the_layout_lacks_stops_with_one_line(realworld, pamap2, dataset, stage, message):
    path, (train, val, test) = {"realworld": realworld, "pamap2": pamap2}[dataset]
    make = rw_cfg if dataset == "realworld" else pamap2_cfg
    cfg = make(path, f"continual.stages=[{{rounds: 1}}, {{name: late, rounds: 1, {stage}}}]")
    with pytest.raises(ConfigError) as e:
        schedule.check_schedule(cfg, train, val, test)
    assert str(e.value) == message and "\n" not in str(e.value)


def test_realworld_loaded_at_one_placement_names_the_one_it_has(realworld):
    """A config naming one ``data.placement`` loads it alone: a stage of another position is told what there is."""
    path, _ = realworld
    cfg = rw_cfg(path, "data.placement=waist", "continual.stages=[{rounds: 1}, {rounds: 1, placements: [forearm]}]")
    train, val, test = split_windows(cfg.data, cfg.seed)
    with pytest.raises(ConfigError, match=r"^continual.stages\[1\] \(stage-2\).placements: \['forearm'\] not in "
                                          r"the data; its placements: \['waist'\]$"):  # fmt: skip
        schedule.check_schedule(cfg, train, val, test)


# ---- the user's paths: the placements listed in the config, or saved as one .npz ---------------


@pytest.mark.parametrize("dataset", ["realworld", "pamap2"])
def test_a_config_listing_the_placements_runs_the_schedule_through_the_pipeline(realworld, pamap2, dataset):
    """One config: ``data.placement`` lists the placements the stages name (the window cache included)."""
    if dataset == "realworld":
        path, (train, _, _) = realworld
        cfg = rw_cfg(path, _placements(RW_PLACEMENTS), RW_STAGES)
        expected = RW_EXPECTED
    else:
        path, (train, _, _) = pamap2
        cfg = pamap2_cfg(path, _placements(PAMAP2_IMUS), PAMAP2_STAGES)
        expected = PAMAP2_EXPECTED
    train2, val2, test2 = split_windows(cfg.data, cfg.seed)
    np.testing.assert_array_equal(train2.x, train.x)
    assert_schedule(cfg, train2, val2, test2, expected)


@pytest.mark.parametrize("method", ["naive", "joint"])
def test_placements_saved_as_one_npz_run_the_schedule_through_the_pipeline(pamap2, tmp_path, method):
    path, (train, val, test) = pamap2
    npz = tmp_path / "pamap2-imus.npz"
    WindowSet.concat([train, val, test]).save(npz)
    cfg = pamap2_cfg(npz, "data.dataset=generic", PAMAP2_STAGES, f"continual.method={method}")
    train2, val2, test2 = split_windows(cfg.data, cfg.seed)
    assert len(train2) == len(train) and _tags(train2, "placement") == {"wrist", "chest", "ankle"}
    if method == "naive":
        assert_schedule(cfg, train2, val2, test2, PAMAP2_EXPECTED)
    else:  # an .npz window is its own recording (start 0 s): still every stage's window, once
        schedule.check_schedule(cfg, train2, val2, test2)
        assert len(schedule.stage_train(cfg, train2, 0)) == sum(
            _matching(train2, p, s) for p, s in PAMAP2_EXPECTED)  # fmt: skip
