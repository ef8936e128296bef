"""Stage schedules: config validation, rounds → stages, what each simulated client holds per stage, replay."""

from __future__ import annotations

import numpy as np
import pytest

from fedhar.config import load_config
from fedhar.continual import schedule
from fedhar.errors import ConfigError

#: 6 synthetic subjects: 1-4 train, 5 validates, 6 tests; two set-ups (phone-a waist, watch-c wrist)
TWO_DOMAINS = [
    "data.dataset=synthetic", "data.synthetic.seconds_per_activity=4", "data.window=64",
    "data.synthetic.recordings=[[1,phone-a,waist],[2,phone-a,waist],[3,phone-a,waist],[2,watch-c,wrist],"
    "[3,watch-c,wrist],[4,watch-c,wrist],[5,phone-a,waist],[5,watch-c,wrist],[6,phone-a,waist],[6,watch-c,wrist]]",
    "data.split.val=[5]", "data.split.test=[6]",
    "model.backbone=tiny-llama", "model.num_layers=2", "model.tokens=8", "model.conv_channels=16",
    "train.batch_size=16", "train.device=cpu", "federated.min_clients=2",
]  # fmt: skip
STAGES = ("continual.stages=[{name: waist, rounds: 2, subjects: [1, 2, 3], devices: [phone-a]},"
          "{name: wrist, rounds: 3, subjects: [2, 3, 4], devices: [watch-c]}]")  # fmt: skip


def cfg(*overrides: str):
    return load_config(None, [*TWO_DOMAINS, STAGES, *overrides])


def test_rounds_map_to_stages_and_the_schedule_sets_the_round_count():
    c = cfg("federated.rounds=99")
    assert c.federated.rounds == 5  # the stages' rounds replace federated.rounds
    assert [schedule.stage_of_round(c, r) for r in range(1, 7)] == [0, 0, 1, 1, 1, 1]
    assert schedule.stage_last_rounds(c) == [2, 5]
    assert c.continual.stage_names == ["waist", "wrist"]
    plain = load_config(None, TWO_DOMAINS)
    assert schedule.stage_of_round(plain, 3) == 0 and schedule.num_stages(plain) == 1


@pytest.mark.parametrize("override, message", [
    ("continual.method=forget", "continual.method must be one of"),
    ("continual.stages=[]", "continual.stages is empty"),
    ("continual.stages=[{rounds: 0}]", r"continual.stages\[0\].rounds must be >= 1"),
    ("continual.stages=[{name: a}, {name: a}]", "two stages share a name"),
    ("continual.stages=[{rounds: 1, classes: []}]", "classes is empty"),
    ("continual.stages=[{rounds: 1, transform: {sample_rate: -5}}]", "sample_rate"),
    ("continual.replay_size=0", "replay_size"),
    ("federated.dp.noise_multiplier=1.0", "continual with federated.dp is not supported"),
])  # fmt: skip
def test_bad_schedules_fail_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        cfg(override)


@pytest.mark.parametrize("stage, message", [
    ("{name: late, rounds: 1, subjects: [1, 9]}", r"continual.stages\[1\] \(late\).subjects: \['9'\] not in the data; "
                                                 r"its training subjects: \['1', '2', '3', '4'\]"),
    ("{name: late, rounds: 1, devices: [phone-z]}", r"\(late\).devices: \['phone-z'\] not in the data; its devices: "
                                                   r"\['phone-a', 'watch-c'\]"),
    ("{name: late, rounds: 1, placements: [ankle]}", r"\(late\).placements: \['ankle'\] not in the data"),
    ("{name: late, rounds: 1, classes: [JUMPING]}", r"\(late\).classes: \['JUMPING'\] not in the data's classes"),
    ("{name: late, rounds: 1, subjects: [1], devices: [watch-c]}", r"\(late\): no training window matches"),
])  # fmt: skip
def test_a_stage_naming_what_the_data_lacks_stops_before_round_1(stage, message):
    from fedhar.federated.simulate import check_federation

    c = load_config(None, [*TWO_DOMAINS, f"continual.stages=[{{rounds: 1}}, {stage}]"])
    with pytest.raises(ConfigError, match=message):
        check_federation(c)


def test_nodes_keep_their_user_across_stages_and_sit_out_a_stage_they_are_not_in():
    from fedhar.federated.data import client_data, simulated_partition, stage_windows

    c = cfg()
    parts0, names0 = simulated_partition(c, 0)
    parts1, names1 = simulated_partition(c, 1)
    assert names0 == names1 == ["subject-1", "subject-2", "subject-3", "subject-4"]
    assert [len(p) > 0 for p in parts0] == [True, True, True, False]
    assert [len(p) > 0 for p in parts1] == [False, True, True, True]
    assert set(stage_windows(c, 0).device.tolist()) == {"phone-a"}
    assert set(stage_windows(c, 1).device.tolist()) == {"watch-c"}
    assert client_data(c, {"partition-id": 3}, 0) is None  # subject 4 arrives in stage 2
    assert client_data(c, {"partition-id": 0}, 1) is None  # subject 1 left
    d = client_data(c, {"partition-id": 1}, 1)
    assert d.name == "subject-2" and set(d.train.device.tolist()) == {"watch-c"}


def test_domains_are_the_held_out_subjects_under_each_stage_filter():
    from fedhar.federated.data import subject_split

    c = cfg()
    _, val, test = subject_split(c)
    domains = schedule.domains(c, val, test)
    assert [d.name for d in domains] == ["waist", "wrist"]
    assert set(domains[0].test.device.tolist()) == {"phone-a"} and set(domains[1].test.device.tolist()) == {"watch-c"}
    assert set(domains[0].test.subject.tolist()) == {"6"} and set(domains[1].val.subject.tolist()) == {"5"}


def test_class_incremental_stages_label_only_their_classes():
    from fedhar.federated.data import stage_windows

    c = load_config(None, [*TWO_DOMAINS, "continual.stages=[{rounds: 1, classes: [WALKING, SITTING]},"
                                        "{rounds: 1, classes: [LAYING]}]"])  # fmt: skip
    names = stage_windows(c, 0).label_names
    assert sorted({names[i] for i in stage_windows(c, 0).y}) == ["SITTING", "WALKING"]
    assert {names[i] for i in stage_windows(c, 1).y} == {"LAYING"}
    assert len(names) == 6  # the model keeps every class from the start


def test_a_device_transform_tags_its_windows_and_changes_them():
    from fedhar.federated.data import stage_windows, subject_split

    c = load_config(None, [*TWO_DOMAINS, "continual.stages=[{rounds: 1, devices: [phone-a]},"
                                        "{rounds: 1, devices: [phone-a], transform: {name: cheap-imu, "
                                        "sample_rate: 20, axes: 'y,-x,z', acc_noise: 0.05}}]"])  # fmt: skip
    a, b = stage_windows(c, 0), stage_windows(c, 1)
    assert set(b.device.tolist()) == {"cheap-imu"} and len(a) == len(b)
    assert not np.allclose(a.x, b.x)
    _, val, test = subject_split(c)
    assert set(schedule.domains(c, val, test)[1].test.device.tolist()) == {"cheap-imu"}


def test_joint_holds_every_stage_from_the_start_without_duplicates():
    from fedhar.federated.data import stage_windows

    c = cfg("continual.method=joint")
    joint = stage_windows(c, 0)
    assert set(joint.device.tolist()) == {"phone-a", "watch-c"}
    naive = cfg()
    assert len(joint) == len(stage_windows(naive, 0)) + len(stage_windows(naive, 1))
    assert len(stage_windows(c, 1)) == len(joint)


def test_replay_keeps_a_bounded_share_of_the_clients_own_earlier_windows():
    from fedhar.federated.data import client_data, simulated_partition, stage_windows

    c = cfg("continual.method=replay", "continual.replay_size=10")
    plain = client_data(cfg(), {"partition-id": 1}, 1)
    replayed = client_data(c, {"partition-id": 1}, 1)
    assert len(replayed.train) == len(plain.train) + 10
    extra = replayed.train.subset(np.arange(len(plain.train), len(replayed.train)))
    assert set(extra.device.tolist()) == {"phone-a"} and set(extra.subject.tolist()) == {"2"}  # its own past only
    parts, names = simulated_partition(c, 0)
    own = stage_windows(c, 0).subset(parts[names.index("subject-2")])
    assert set(extra.start_s.tolist()) <= set(own.start_s.tolist())
    again = client_data(c, {"partition-id": 1}, 1)
    assert np.array_equal(again.train.x, replayed.train.x)  # any worker rebuilds the same buffer
    assert client_data(c, {"partition-id": 3}, 1).train.device.tolist().count("phone-a") == 0  # new user: no past
    assert len(client_data(c, {"partition-id": 1}, 0).train) == len(client_data(cfg(), {"partition-id": 1}, 0).train)


def test_a_deployed_client_stores_its_stage_share_on_its_disk_and_replays_it_later(tmp_path):
    from fedhar.continual.replay import REPLAY_DIR, replay_buffer, replay_folder
    from fedhar.federated.data import stage_windows

    c = cfg("continual.method=replay", "continual.replay_size=8")
    folder = replay_folder(c, {"data-path": str(tmp_path / "recordings"), REPLAY_DIR: str(tmp_path / "buffer")}, "d")
    assert folder == tmp_path / "buffer"
    first, later = stage_windows(c, 0), stage_windows(c, 1)

    def never(stage):
        raise AssertionError("a deployed client's buffer comes from its own disk, not from the schedule")

    assert replay_buffer(c, "dev-1", 0, first, never, folder) is None  # nothing from before the first stage
    assert (tmp_path / "buffer" / "stage-000.npz").is_file()
    buffer = replay_buffer(c, "dev-1", 1, later, never, folder)
    assert len(buffer) == 8 and set(buffer.device.tolist()) == {"phone-a"}
    assert (tmp_path / "buffer" / "stage-001.npz").is_file()
    assert np.array_equal(replay_buffer(c, "dev-1", 1, later, never, folder).x, buffer.x)  # read back, not redrawn


def tiny_model(c):
    """The tiny-backbone HARNet for config ``c`` and its training windows (identity normaliser): the model the
    method tests (olora, ewc product) probe directly."""
    from fedhar.data.preprocess import Normalizer
    from fedhar.federated.data import subject_split
    from fedhar.model.har_model import DataSpec, build_model

    train, _, _ = subject_split(c)
    spec = DataSpec(train.layout, train.window_len, train.sample_rate, list(train.label_names),
                    Normalizer.identity(train.num_channels))  # fmt: skip
    return build_model(c.model, spec, c.seed), train
