"""train.threads: the auto chooser on fake timings, and applying the setting at startup."""

import random

import pytest
import torch

from src import threads
from src.threads import MAX_PERIOD_S, ThreadTuner, configure_threads, ladder

# Seconds per image on 2 cores (the quickstart figures): idle, and beside one busy loop.
IDLE = {1: 1 / 169, 2: 1 / 308}
BUSY = {1: 1 / 181, 2: 1 / 89}
BATCH = 64


def tuner(max_threads: int = 2, **kwargs) -> tuple[ThreadTuner, list[int], list[str]]:
    applied, said = [], []
    return ThreadTuner(max_threads, apply=applied.append, say=said.append, **kwargs), applied, said


def run(t: ThreadTuner, cost: dict[int, float], units: int, kind: str | None = None) -> float:
    """Feed `units` units of BATCH images timed by `cost` at the tuner's count; their total seconds."""
    total = 0.0
    for _ in range(units):
        seconds = cost[t.threads] * BATCH
        t.record(seconds, BATCH, kind)
        total += seconds
    return total


def test_it_picks_the_faster_count_and_says_why():
    t, applied, said = tuner()
    run(t, BUSY, 20)
    assert t.threads == 1 and applied[0] == 2 and applied[-1] == 1
    assert said == ["threads 1 (auto: 1 thread 181 img/s, 2 threads 89 img/s)"]


def test_it_keeps_all_cores_when_they_are_faster_and_then_stays_quiet():
    t, applied, said = tuner()
    run(t, IDLE, 1000)  # about 3.5 minutes of work: several more measurements, no change
    assert t.threads == 2
    assert said == ["threads 2 (auto: 2 threads 308 img/s, 1 thread 169 img/s)"]
    assert t.units[1] < 0.02 * t.units[2]


def test_it_comes_back_up_when_the_load_goes():
    t, _, said = tuner()
    run(t, BUSY, 400)
    assert t.threads == 1
    lines = len(said)
    switched_after = next(i for i in range(1000) if run(t, IDLE, 1) and len(said) > lines)
    assert t.threads == 2 and switched_after * IDLE[1] * BATCH <= MAX_PERIOD_S + 5  # within one period
    assert said[-1] == "threads 2 (auto: 2 threads 308 img/s, 1 thread 169 img/s)"


def test_a_new_load_is_noticed_without_waiting_for_the_period():
    t, _, said = tuner()
    run(t, IDLE, 600)
    assert t.threads == 2
    run(t, BUSY, 12)  # the current count's speed drops: measure now
    assert t.threads == 1 and said[-1].startswith("threads 1 (auto: 1 thread 181 img/s")


@pytest.mark.parametrize("max_threads", [1, 2, 3, 4, 8])
def test_it_never_goes_below_1_or_above_the_cores(max_threads):
    t, applied, said = tuner(max_threads)
    rng = random.Random(max_threads)
    for _ in range(60):  # the load changes every 50 units, to random speeds per count
        cost = {n: rng.uniform(0.001, 0.1) for n in range(1, max_threads + 1)}
        run(t, cost, 50, kind=rng.choice(["step", "step", "decode"]))
        assert 1 <= t.threads <= max_threads
    assert all(1 <= n <= max_threads for n in applied)
    if max_threads == 1:
        assert applied == [1] and said == [] and t.units == {1: 3000}
    else:
        assert len(set(applied)) > 1  # it did move


def test_near_equal_counts_do_not_flip():
    t, applied, said = tuner()
    run(t, {1: 0.0098, 2: 0.01}, 500)  # 1 thread 2% faster: within the hysteresis
    assert t.threads == 2 and said == ["threads 2 (auto: 1 thread 102 img/s, 2 threads 100 img/s; 2 threads "
                                       "kept, within 5%)"]


def test_larger_machines_move_along_the_ladder():
    assert ladder(1) == [1] and ladder(2) == [1, 2] and ladder(6) == [1, 2, 4, 6] and ladder(8) == [1, 2, 4, 8]
    t, _, _ = tuner(8)
    run(t, {1: 0.004, 2: 0.002, 4: 0.0015, 8: 0.003}, 2000)  # 8 hyperthreads on 4 cores: 4 is best
    assert t.threads == 4


def test_other_work_abandons_a_measurement():
    t, applied, _ = tuner()
    run(t, IDLE, 2, kind="inception")  # warm-up, one unit at 2: now measuring 1 thread
    assert t.probe and t.threads == 1
    t.record(0.5, 4, "encode")  # another loop: its timings are not comparable
    assert t.probe is None and t.threads == 2 and applied[-1] == 2


def test_measuring_costs_under_2_percent_of_the_work():
    for cost in (IDLE, BUSY):
        t, _, _ = tuner()
        units = 1400  # 15 quickstart epochs
        best = min(cost.values()) * BATCH * units
        assert run(t, cost, units) / best - 1 < 0.02


def test_configure_forces_an_integer_on_any_device(monkeypatch):
    before, said = torch.get_num_threads(), []
    try:
        assert configure_threads(1, torch.device("cuda"), say=said.append) is None
        assert torch.get_num_threads() == 1 and said == ["threads 1 (train.threads=1)"]
        assert configure_threads("auto", torch.device("cuda"), say=said.append) is None  # nothing to tune
        assert torch.get_num_threads() == 1 and len(said) == 1
    finally:
        torch.set_num_threads(before)


def test_auto_starts_from_each_ranks_share_of_the_cores(monkeypatch):
    before, said = torch.get_num_threads(), []
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        tuner = configure_threads("auto", torch.device("cpu"), say=said.append)
        assert tuner.max_threads == 4 and torch.get_num_threads() == 4
        assert said == ["threads 4 (auto: 8 cores / 2 ranks; while other programs use the CPU, times 4 against 2 and "
                        "keeps the faster)"]
        with threads.timed(4, "step"):  # the module-level timed() feeds the active tuner
            pass
        assert tuner.units == {4: 1}
    finally:
        configure_threads(before, torch.device("cpu"), say=lambda line: None)
    with threads.timed(4):  # no tuner now: a no-op
        pass


def test_only_a_speed_change_that_could_change_the_choice_triggers_a_measurement():
    t, applied, _ = tuner()
    run(t, BUSY, 20)
    switches = len(applied)
    run(t, {n: 3 * c for n, c in BUSY.items()}, 20)  # a heavier load at 1 thread: no fewer threads to try
    assert t.threads == 1 and len(applied) == switches
    t, applied, _ = tuner()
    run(t, IDLE, 20)
    switches = len(applied)
    run(t, {n: c / 2 for n, c in IDLE.items()}, 20)  # all cores, and faster still: no more threads to try
    assert t.threads == 2 and len(applied) == switches


def test_alone_on_the_machine_it_never_tries_fewer_threads_so_the_numbers_are_the_full_counts():
    load = {"busy": False}
    t, applied, said = tuner(others_busy=lambda: load["busy"])
    run(t, IDLE, 1000)
    assert applied == [2] and said == [] and t.units == {2: 1000}  # bitwise the run of a forced 2
    load["busy"] = True  # another program starts: now it measures, and moves
    run(t, BUSY, 20)
    assert t.threads == 1
    load["busy"] = False  # at fewer threads it measures upward whatever the others do
    run(t, IDLE, 1000)
    assert t.threads == 2


def test_other_programs_cpu_time_is_read_from_proc(monkeypatch):
    # (all CPU jiffies, this process's jiffies, seconds); 100 jiffies a second
    readings = iter([(1000, 100, 0.0), (1300, 200, 1.0), (1500, 300, 2.0), (1700, 400, 3.0), (1700, 400, 3.1),
                     (1810, 500, 4.0), (2010, 600, 5.0)])
    monkeypatch.setattr(threads.OtherPrograms, "_read", staticmethod(lambda: next(readings)))
    monkeypatch.setattr(threads.os, "sysconf", lambda name: 100)
    others = threads.OtherPrograms()
    assert others() is False   # 300 jiffies in all, 100 of them ours: others used 2 cores, but only just now
    assert others() is False   # 1 core for 1 s more: not yet OTHERS_SUSTAINED_S
    assert others() is True    # and 1 s more: a sustained load
    assert others() is True    # 0.1 s later: too short to tell (the kernel counts in 10 ms); the last verdict
    assert others() is False   # 110 in all, 100 ours: 0.1 core, the load has gone
    assert others() is False   # busy again (1 core), but the 2 s start over
    monkeypatch.undo()
    real = threads.OtherPrograms()
    assert real() in (True, False)  # on Linux a real reading; elsewhere True


def test_a_blip_of_other_work_at_the_start_leaves_the_full_count(monkeypatch):
    """What moved a fresh clone's quickstart off its numbers: something else used the CPU for a
    moment as training started (2 steps at 1 thread). A blip shorter than OTHERS_SUSTAINED_S is ignored."""
    clock = {"t": 0.0, "others": 0}  # seconds, and jiffies used by other programs (this process uses none here)
    monkeypatch.setattr(threads.OtherPrograms, "_read", staticmethod(lambda: (clock["others"], 0, clock["t"])))
    monkeypatch.setattr(threads.os, "sysconf", lambda name: 100)
    t, applied, said = tuner(others_busy=threads.OtherPrograms())
    for step in range(200):  # 0.5 s steps; others use both cores during the first 1.5 s only
        if step < 3:
            clock["others"] += 100
        clock["t"] += 0.5
        t.record(IDLE[t.threads] * BATCH, BATCH)
    assert applied == [2] and said == [] and t.units == {2: 200}


def test_short_units_are_pooled_so_a_busy_programs_time_slices_are_not_missed():
    t, _, said = tuner()
    for _ in range(2000):  # 2-3 ms decodes of one image each, at the busy speeds
        t.record(BUSY[t.threads] * 0.5, 1, "decode")
    assert t.threads == 1 and said[0].startswith("threads 1 (auto: 1 thread 362 img/s, 2 threads 178 img/s")
    assert t.units[1] > 0.9 * sum(t.units.values())
