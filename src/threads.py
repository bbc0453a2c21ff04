"""How many CPU threads PyTorch uses (train.threads): a forced count, or "auto", which measures.

On a busy machine the default (one thread per core) can be the slowest choice: every parallel
region waits for the thread that the scheduler parked behind the other program (on 2 cores, one
busy loop at normal priority made training 3.5x slower, and half as fast as one thread). "auto"
times the repeated units of work a script does (training steps, Inception batches, decodes) at
the current count and at its neighbours, keeps the faster, and measures again from time to time
so that it climbs back when the other program stops.

    tuner = configure_threads(cfg.train.threads, device)   # once, at startup (None: nothing to tune)
    for x in batches:
        with timed(len(x), "train step"):                  # a no-op unless a tuner is active
            train_step(...)

The count is process-wide (torch.set_num_threads), so the active tuner is too: loops anywhere in
src/ time their units through timed() without being handed the tuner.

What the count changes: on the CPU the result of some reductions depends on how they are split
across threads (BatchNorm's batch statistics in channels_last, convolution weight gradients in
NCHW), so weights trained at different counts differ from the first step by float32 rounding. A
forced count is bitwise reproducible; under "auto" a run is bitwise the run with the same count at
every step (docs/performance.md). So that an idle machine keeps the numbers of the
full count, auto measures fewer threads only while other programs use the CPU (Linux: from
/proc/stat, the CPU time of everything else; elsewhere it always measures).
"""

import contextlib
import os
import statistics
from collections import Counter, deque
from time import monotonic, perf_counter
from typing import Callable, Iterator

import torch
from tqdm import tqdm

SAMPLES = 3          # timed units per count in a measurement (their median)
MIN_UNIT_S = 0.1     # shorter units (one decode: 2-3 ms) are pooled into one of at least this long: a busy
                     # program's time slices are milliseconds long, and three 3-ms units can miss them all
OTHERS_EVERY_S = 0.5  # other programs' CPU use is read over at least this long (the kernel counts in 10 ms)
MARGIN = 0.05        # another count must be this much faster to be chosen (hysteresis)
CLEARLY_SLOWER = 1.3  # a probe stops after one unit this much slower than the current count
OTHERS_BUSY = 0.5    # other programs using this many cores or more make fewer threads worth measuring ...
OTHERS_SUSTAINED_S = 2.0  # ... once they have for this long: a blip (a file sync, a shell command, the tail
                          # of a pip install) would move a quickstart off the full count's numbers for nothing
DRIFT = 0.3          # the current count this much slower or faster than when chosen: the load changed, measure
PERIOD_S = 60.0      # seconds of timed work between measurements; doubles while the choice holds ...
MAX_PERIOD_S = 180.0  # ... up to this


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset or a container), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def rank_share() -> int:
    """This process's share of the cores: all of them, or under torchrun cores // processes on this node."""
    return max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def ladder(max_threads: int) -> list[int]:
    """The counts auto moves between: 1, 2, 4, ... and max_threads itself."""
    counts, n = {max_threads}, 1
    while n < max_threads:
        counts.add(n)
        n *= 2
    return sorted(counts)


class OtherPrograms:
    """Whether other programs have been using the CPU for OTHERS_SUSTAINED_S: the cores they used in
    each interval between calls (all CPU time in /proc/stat minus this process's). Linux only;
    elsewhere always True (measure anyway)."""

    def __init__(self):
        self.last = self._read()
        self.busy = self.last is None  # unknown until a first interval has passed: not busy, where readable
        self.busy_since = None         # when the current run of busy intervals began (see __call__)

    @staticmethod
    def _read() -> tuple[int, int, float] | None:
        try:
            with open("/proc/stat") as f:
                times = [int(v) for v in f.readline().split()[1:9]]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()  # the fields after the command name
        except (OSError, ValueError, IndexError):
            return None
        busy = sum(times) - times[3] - times[4]  # all but idle and iowait
        return busy, int(own[11]) + int(own[12]), monotonic()  # utime + stime of every thread

    def __call__(self) -> bool:
        now = self._read()
        if now is None or self.last is None:
            return True
        (busy0, mine0, t0), (busy1, mine1, t1) = self.last, now
        if t1 - t0 >= OTHERS_EVERY_S:  # sooner, keep the last verdict
            cores = ((busy1 - busy0) - (mine1 - mine0)) / os.sysconf("SC_CLK_TCK") / (t1 - t0)
            if cores < OTHERS_BUSY:
                self.busy_since = None
            elif self.busy_since is None:  # from the end of the first busy interval: one long one is no load
                self.busy_since = t1
            self.last = now
            self.busy = self.busy_since is not None and t1 - self.busy_since >= OTHERS_SUSTAINED_S
        return self.busy


def others_busy_check(measure_alone: bool) -> Callable[[], bool]:
    """The tuner's others_busy: always True when measuring alone too, else OtherPrograms()."""
    return (lambda: True) if measure_alone else OtherPrograms()


def _plural(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


class ThreadTuner:
    """Chooses the thread count from timings of repeated units of work, fed through record().

    Settled, it runs at one count and keeps the last SAMPLES per-image times. It measures after
    the first timed unit, after PERIOD_S seconds of work (doubling while the choice holds), and at
    once when the current count runs DRIFT slower (if it can go down) or faster (if it can go up)
    than when it was chosen. A measurement
    runs the neighbouring counts on the ladder (the next lower, the next higher) for SAMPLES units
    each after one untimed warm-up unit (one unit when it is CLEARLY_SLOWER), and moves to the
    fastest if it is MARGIN faster than the current count. A change of the kind of unit (record's
    `kind`) or boundary() abandons a measurement: timings of different work are not compared.
    Never below 1 or above max_threads.

    At the full count it measures only while others_busy() says other programs use the CPU: alone,
    fewer threads are never faster, and never measuring keeps a forced full count's numbers.

    apply(n) sets the count (torch.set_num_threads); say(line) reports the first choice and every change.
    """

    def __init__(self, max_threads: int, start: int | None = None, apply: Callable[[int], None] = torch.set_num_threads,
                 say: Callable[[str], None] = print, others_busy: Callable[[], bool] = lambda: True):
        self.max_threads = max(1, max_threads)
        self.best = min(self.max_threads, max(1, start or self.max_threads))
        self.apply, self.say, self.others_busy = apply, say, others_busy
        self.units = Counter()           # units run at each count (what a run reports)
        self.period, self.work = PERIOD_S, 0.0
        self.window = deque(maxlen=SAMPLES)
        self.reference = None            # per-image seconds of `best` when it was chosen
        self.probe = None                # {"todo": [counts], "times": {count: [seconds per image]}}
        self.kind, self.skip, self.decided = None, True, False
        self.pending = (0.0, 0)          # seconds and images of short units not yet long enough to judge
        self.threads = self.best
        self.apply(self.best)

    # ---------------------------------------------------------------- input

    def record(self, seconds: float, images: int = 1, kind: str | None = None) -> None:
        """One unit of work of `images` images took `seconds` at the current count."""
        if kind != self.kind:
            self.boundary()
            self.kind = kind
        self.units[self.threads] += 1
        self.pending = (self.pending[0] + seconds, self.pending[1] + images)
        if self.pending[0] < MIN_UNIT_S:
            return
        (seconds, images), self.pending = self.pending, (0.0, 0)
        if self.skip:  # the first unit after a change or a boundary pays for warm-up
            self.skip = False
            return
        per_image = seconds / max(images, 1)
        if self.probe:
            self._probe_unit(per_image)
            return
        self.window.append(per_image)
        self.work += seconds
        if self._due():
            self._start_probe()

    @contextlib.contextmanager
    def timed(self, images: int = 1, kind: str | None = None) -> Iterator[None]:
        """Time the block as one unit of work (on the CPU, where the work is done when the block ends)."""
        start = perf_counter()
        yield
        self.record(perf_counter() - start, images, kind)

    def boundary(self) -> None:
        """Other work happened (validation, a checkpoint, another loop): drop the measurement under way."""
        if self.probe:
            self.probe = None
            self._set(self.best)
        self.window.clear()
        self.skip, self.pending = True, (0.0, 0)

    # ---------------------------------------------------------------- choice

    def _due(self) -> bool:
        if self.max_threads == 1 or not self.window:
            return False
        if self.best == self.max_threads and not self.others_busy():
            return False
        if not self.decided:  # the first choice: one unit at the start count, as a slow count may cost a lot
            return True
        if len(self.window) < SAMPLES:
            return False
        if self.work >= self.period:
            return True
        # A load that came (slower) can only favour fewer threads, one that left (faster) more of them.
        now = statistics.median(self.window)
        slower, faster = now > (1 + DRIFT) * self.reference, now < (1 - DRIFT) * self.reference
        return (slower and self.best > 1) or (faster and self.best < self.max_threads)

    def _start_probe(self) -> None:
        counts = sorted(set(ladder(self.max_threads)) | {self.best})
        i = counts.index(self.best)
        todo = [counts[j] for j in (i - 1, i + 1) if 0 <= j < len(counts)]
        self.probe = {"todo": todo, "times": {self.best: list(self.window)}}
        self._set(todo[0])

    def _probe_unit(self, per_image: float) -> None:
        times = self.probe["times"].setdefault(self.threads, [])
        times.append(per_image)
        current = statistics.median(self.probe["times"][self.best])
        if len(times) < SAMPLES and per_image < CLEARLY_SLOWER * current:
            return
        self.probe["todo"].pop(0)
        if self.probe["todo"]:
            self._set(self.probe["todo"][0])
        else:
            self._decide()

    def _decide(self) -> None:
        medians = {n: statistics.median(t) for n, t in self.probe["times"].items()}
        fastest = min(medians, key=medians.get)
        previous = self.best
        if fastest != previous and medians[fastest] <= (1 - MARGIN) * medians[previous]:
            self.best, self.period = fastest, PERIOD_S
        else:
            self.period = min(2 * self.period, MAX_PERIOD_S)
        if self.best != previous or not self.decided:
            rates = ", ".join(f"{_plural(n)} {1 / max(medians[n], 1e-9):.0f} img/s"
                              for n in sorted(medians, key=medians.get))
            self.say(f"threads {self.best} (auto: {rates}" + ("" if self.best == fastest else
                     f"; {_plural(previous)} kept, within {MARGIN:.0%}") + ")")
        self.decided, self.probe = True, None
        self.reference, self.work = medians[self.best], 0.0
        self.window.clear()
        self._set(self.best)

    def _set(self, n: int) -> None:
        if n != self.threads:
            self.threads, self.skip, self.pending = n, True, (0.0, 0)
            self.apply(n)


# ------------------------------------------------------------------------ the process's tuner

_active: ThreadTuner | None = None


def configure_threads(setting: int | str, device: torch.device, say: Callable[[str], None] = tqdm.write,
                      measure_alone: bool = False) -> ThreadTuner | None:
    """Apply train.threads at a script's startup and print one line; returns the tuner under "auto" on the CPU.

    An integer sets that count on every device (on CUDA/MPS it is the CPU side's). "auto" on CUDA or
    MPS changes nothing: the CPU only feeds the accelerator there. By default auto tries fewer threads
    only while other programs use the CPU, so that results stay those of the full count on an idle
    machine; `measure_alone` (the editor, whose numbers are latencies) measures regardless: one
    image's decode runs faster on one thread even alone.
    """
    global _active
    _active = None
    if setting != "auto":
        torch.set_num_threads(setting)
        say(f"threads {setting} (train.threads={setting})")
        return None
    if device.type != "cpu":
        return None
    share = rank_share()
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    whose = f"{available_cores()} cores / {ranks} ranks" if ranks > 1 else f"{available_cores()} cores"
    ignored = f"; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} ignored, train.threads=N forces a count" \
        if "OMP_NUM_THREADS" in os.environ else ""
    _active = ThreadTuner(share, say=say, others_busy=others_busy_check(measure_alone))
    others = [n for n in ladder(share) if n != share][-1:]
    when = "" if measure_alone else "while other programs use the CPU, "
    plan = f"{when}times {share} against {others[0]} and keeps the faster" if others else "nothing to choose"
    say(f"threads {share} (auto: {whose}; {plan}{ignored})")
    return _active


@contextlib.contextmanager
def timed(images: int = 1, kind: str | None = None) -> Iterator[None]:
    """Time the block as one unit of work for the active tuner, if any (see the module docstring)."""
    if _active is None:
        yield
    else:
        with _active.timed(images, kind):
            yield


def boundary() -> None:
    """Tell the active tuner, if any, that other work happened in between (see ThreadTuner.boundary)."""
    if _active is not None:
        _active.boundary()
