"""GPU slot allocator (histosynth.gpu_slots) and its hook in histosynth.job, on fake GPU lists:
concurrent processes get different GPUs, a third waits, SIGKILL frees a GPU, scheduler
settings are honoured, and a CPU-only machine fails fast unless allow_cpu is set."""

import fcntl
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import histosynth.gpu_slots as gs
from histosynth.errors import InputError
from histosynth.gpu_slots import gpu_slots

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Holds one GPU of the fake list argv[1] until a line arrives on stdin (or it is killed).
HOLDER = """
import os, sys
from histosynth.gpu_slots import gpu_slots
with gpu_slots(1, lock_dir=sys.argv[2], devices=sys.argv[1].split(","), poll=0.05):
    print("GOT", os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
    sys.stdin.readline()
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No scheduler settings from the machine running the tests; locks in tmp_path."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv(gs.LOCK_DIR_ENV, str(tmp_path / "locks"))


class Holder:
    """A separate process holding one GPU slot; its output lines arrive on a queue."""

    def __init__(self, devices: str, lock_dir: Path):
        env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
        env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, devices, str(lock_dir)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line.strip()) for line in self.proc.stdout],
                         daemon=True).start()

    def line(self, timeout=10.0) -> str:
        return self.lines.get(timeout=timeout)

    def got(self, timeout=10.0) -> str:
        """The device it got (skipping its "waiting" lines)."""
        while not (line := self.line(timeout)).startswith("GOT "):
            pass
        return line.split()[1]

    def release(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.wait(timeout=10) == 0

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def holders(tmp_path):
    started = []

    def start(devices: str) -> Holder:
        started.append(Holder(devices, tmp_path / "locks"))
        return started[-1]

    yield start
    for h in started:
        h.kill()


def hold(lock_dir: Path, device: str, patience=0.5) -> int:
    """Take a GPU's lock by hand, as another job would (BlockingIOError if it stays held)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"gpu-{device}.lock", os.O_RDWR | os.O_CREAT)
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise
            time.sleep(0.005)


def test_exports_the_chosen_gpu_and_restores_the_environment(tmp_path):
    with gpu_slots(1, devices=["0", "1"]) as ids:
        assert ids == ["0"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        assert (tmp_path / "locks" / "gpu-0.lock").exists()  # default dir from the env var, made
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with gpu_slots(1, devices=["0", "1"]) as ids:  # released: the same GPU again
        assert ids == ["0"]


def test_skips_held_gpus_and_takes_several_at_once(tmp_path):
    fd = hold(tmp_path / "locks", "1")
    with gpu_slots(2, devices=["0", "1", "2"]) as ids:
        assert ids == ["0", "2"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,2"
    with pytest.raises(TimeoutError):  # only 2 free of 3 while "1" is held: 3 cannot fit
        with gpu_slots(3, devices=["0", "1", "2"], poll=0.05, timeout=0.2):
            pass
    os.close(fd)
    with pytest.raises(InputError, match="3 GPUs requested but only 2"):
        with gpu_slots(3, devices=["0", "1"]):
            pass


def test_a_waiting_job_keeps_no_gpu(tmp_path):
    """Wanting 2 GPUs while 1 is held, it must not sit on the free one (no deadlock)."""
    fd1 = hold(tmp_path / "locks", "1")
    timed_out = []

    def want_two():
        try:
            with gpu_slots(2, devices=["0", "1"], poll=0.02, timeout=1.0):
                pass
        except TimeoutError:
            timed_out.append(True)

    waiter = threading.Thread(target=want_two)
    waiter.start()
    time.sleep(0.3)
    fd0 = hold(tmp_path / "locks", "0")  # GPU 0 stays free for others meanwhile
    waiter.join()
    assert timed_out
    os.close(fd0)
    os.close(fd1)


def test_two_processes_get_different_gpus(holders):
    a, b = holders("0,1"), holders("0,1")
    assert {a.got(), b.got()} == {"0", "1"}


def test_a_third_process_waits_until_a_gpu_is_released(holders):
    a = holders("0,1")
    first = a.got()
    b = holders("0,1")
    b.got()
    c = holders("0,1")
    assert "waiting for a free GPU" in c.line()
    with pytest.raises(queue.Empty):  # still waiting: both GPUs held
        c.line(timeout=0.5)
    a.release()
    assert c.got() == first


def test_a_killed_process_frees_its_gpu(holders):
    a = holders("0")
    assert a.got() == "0"
    with pytest.raises(TimeoutError):  # really held
        with gpu_slots(1, devices=["0"], poll=0.05, timeout=0.2):
            pass
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait(timeout=10)
    start = time.monotonic()
    with gpu_slots(1, devices=["0"], poll=0.05, timeout=5) as ids:
        assert ids == ["0"]
    assert time.monotonic() - start < 1  # freed at once, no stale lock


def test_preset_cuda_visible_devices_restricts_the_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    fd = hold(tmp_path / "locks", "2")
    with gpu_slots(1, devices=["0", "1", "2", "3"]) as ids:
        assert ids == ["3"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    fd3 = hold(tmp_path / "locks", "3")  # now 2 and 3 are held; 0 and 1 are free but not ours
    with pytest.raises(TimeoutError):
        with gpu_slots(1, devices=["0", "1", "2", "3"], poll=0.05, timeout=0.2):
            pass
    os.close(fd)
    os.close(fd3)


def test_slurm_assignment_is_used_as_is_without_locking(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    fd = hold(tmp_path / "locks", "0")  # another SLURM job's "GPU 0" (renumbered in its cgroup)
    with gpu_slots(1, devices=["0"], poll=0.05, timeout=0.2) as ids:  # no TimeoutError: no lock taken
        assert ids == ["0"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    os.close(fd)


@pytest.mark.parametrize("preset", [None, "0", "-1", ""])
def test_cpu_only_machine_changes_nothing(tmp_path, monkeypatch, preset):
    devices = [] if preset in (None, "0") else ["0", "1"]  # "-1" / "" hide every GPU
    if preset is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", preset)
    with gpu_slots(1, devices=devices) as ids:
        assert ids == []
        assert os.environ.get("CUDA_VISIBLE_DEVICES") == preset
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == preset
    assert not (tmp_path / "locks").exists()


def test_default_lock_dir_is_per_user_and_overridable(tmp_path, monkeypatch):
    monkeypatch.delenv(gs.LOCK_DIR_ENV)
    assert gs.default_lock_dir().endswith(f"histosynth-gpu-locks-{os.getuid()}")
    nested = tmp_path / "a" / "b"
    monkeypatch.setenv(gs.LOCK_DIR_ENV, str(nested))
    with gpu_slots(1, devices=["0"]):
        assert (nested / "gpu-0.lock").exists()


def test_machine_gpus_from_nvidia_smi_or_proc(tmp_path, monkeypatch):
    bin_dir, proc = tmp_path / "bin", tmp_path / "proc"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(gs, "PROC_GPUS", str(proc))
    assert gs.machine_gpus() == []  # neither: a CPU-only machine
    proc.mkdir()
    for bus in ("0000:17:00.0", "0000:65:00.0", "0000:ca:00.0"):
        (proc / bus).mkdir()
    assert gs.machine_gpus() == ["0", "1", "2"]  # no nvidia-smi: /proc/driver/nvidia/gpus
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    smi.chmod(0o755)
    assert gs.machine_gpus() == ["0", "1"]
    smi.write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    assert gs.machine_gpus() == ["0", "1", "2"]  # nvidia-smi failed: /proc again


def test_importing_the_allocator_does_not_import_torch():
    code = "import sys, histosynth.gpu_slots; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": SRC})


# --- the hook in histosynth.job ---------------------------------------------------

@pytest.fixture
def jobs():
    """run(smk): a job whose one call records the GPUs it was given."""
    from histosynth.job import job

    seen = {}

    def run(smk):
        with job(smk):
            seen["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES")

    return SimpleNamespace(run=run), seen


def fake_smk(tmp_path, gpu=1, allow_cpu=False):
    return SimpleNamespace(rule="fake_stage", log=[str(tmp_path / "logs" / "fake.log")],
                           resources={"gpu": gpu}, config={"allow_cpu": allow_cpu}, threads=1)


def test_gpu_job_without_gpu_fails_fast_unless_allow_cpu(tmp_path, monkeypatch, jobs, capsys):
    jobs, seen = jobs
    monkeypatch.setattr(gs, "machine_gpus", lambda: [])
    with pytest.raises(SystemExit) as exit_:
        jobs.run(fake_smk(tmp_path, allow_cpu=False))
    assert exit_.value.code == 1
    assert seen == {}  # the stage never ran
    log = (tmp_path / "logs" / "fake.log").read_text()
    assert "histosynth fake_stage: error:" in log and "no CUDA device" in log and "allow_cpu: true" in log
    assert "Traceback" not in log and "allow_cpu" in capsys.readouterr().err


def test_gpu_job_runs_on_cpu_when_allowed(tmp_path, monkeypatch, jobs):
    jobs, seen = jobs
    monkeypatch.setattr(gs, "machine_gpus", lambda: [])
    jobs.run(fake_smk(tmp_path, allow_cpu=True))
    assert seen == {"CUDA_VISIBLE_DEVICES": None}
    assert "no CUDA device found; running on CPU" in (tmp_path / "logs" / "fake.log").read_text()


def test_gpu_job_gets_a_free_gpu_and_logs_it(tmp_path, monkeypatch, jobs):
    jobs, seen = jobs
    monkeypatch.setattr(gs, "machine_gpus", lambda: ["0", "1"])
    fd = hold(tmp_path / "locks", "0")  # another job has GPU 0
    jobs.run(fake_smk(tmp_path))
    os.close(fd)
    assert seen == {"CUDA_VISIBLE_DEVICES": "1"}
    assert "GPU slot: CUDA_VISIBLE_DEVICES=1" in (tmp_path / "logs" / "fake.log").read_text()
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_cpu_job_takes_no_slot(tmp_path, monkeypatch, jobs):
    jobs, seen = jobs

    def no_lookup():
        raise AssertionError("a gpu=0 job looked for GPUs")

    monkeypatch.setattr(gs, "machine_gpus", no_lookup)
    jobs.run(fake_smk(tmp_path, gpu=0, allow_cpu=False))
    assert seen == {"CUDA_VISIBLE_DEVICES": None}
    assert "GPU slot" not in (tmp_path / "logs" / "fake.log").read_text()
