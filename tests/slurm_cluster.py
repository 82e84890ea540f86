"""A real single-node SLURM cluster for the tests (issue 18), with accounting.

Debian's slurmctld, slurmd, slurmdbd, munge and mariadb-server, installed when missing
(root only) and removed again afterwards, so that the machine is left as it was: while
`slurm-client` is installed and no controller answers, the SLURM executor plugin asks
`scontrol show config` at the start of every snakemake call and waits ~10 s for it.
Everything runs from a private directory (its own config, state, ports, database,
munge socket), started as plain processes (no systemd) whose PIDs are kept and stopped;
/etc/slurm links to its config while it runs (srun inside a job reads only that).

    with SlurmCluster(tmp_path) as cluster:   # cluster.env: SLURM_CONF for the clients
        subprocess.run(["sinfo"], env=cluster.env)

`SlurmCluster.unavailable()` says in one line why a cluster cannot be started here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ["munge", "slurm-client", "slurmctld", "slurmd", "slurmdbd", "mariadb-server"]
ACCOUNT = "testlab"
PORTS = {"ctld": 16817, "slurmd": 16818, "dbd": 16819, "mariadb": 16820}
POLICY_RC = Path("/usr/sbin/policy-rc.d")
ETC = Path("/etc/slurm")  # keeps package scripts from starting the services


class Unavailable(RuntimeError):
    """The packages could not be installed here (no network, no mirror): not a failure of the pipeline."""


def _installed(package: str) -> bool:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return out.returncode == 0 and "install ok installed" in out.stdout


def _wait(what: str, ok, timeout: float = 60, log: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ok():
            return
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"SLURM test cluster: {what} did not come up in {timeout:.0f} s\n{tail}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class SlurmCluster:
    def __init__(self, root: Path, cpus: int | None = None, memory_mb: int = 64000):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count()
        self.memory_mb = memory_mb  # what slurmd announces (config_overrides): the profile asks up to 32 GB
        self.host = socket.gethostname().split(".")[0]
        self.procs: list[subprocess.Popen] = []
        self.installed: list[str] = []
        self.env = dict(os.environ, SLURM_CONF=str(self.root / "etc/slurm.conf"))

    @staticmethod
    def unavailable() -> str | None:
        """Why no cluster can be started on this machine, or None."""
        if os.environ.get("HISTOSYNTH_NO_REAL_SLURM"):
            return "HISTOSYNTH_NO_REAL_SLURM is set"
        if os.geteuid() != 0:
            return "not root: cannot install or start slurmctld/slurmd/munge"
        if not shutil.which("apt-get") and not all(map(_installed, PACKAGES)):
            return f"no apt-get to install {PACKAGES}"
        return None

    # -- packages ---------------------------------------------------------------------------------
    def _install(self) -> None:
        missing = [p for p in PACKAGES if not _installed(p)]
        if not missing:
            return
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        self._policy = not POLICY_RC.exists()
        if self._policy:
            POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
            POLICY_RC.chmod(0o755)
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
        if subprocess.run(cmd, env=env, capture_output=True).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode:
                last = (out.stderr.strip().splitlines() or ["?"])[-1]
                raise Unavailable(f"apt-get install {' '.join(missing)} failed: {last}")
        self.installed = missing

    def _uninstall(self) -> None:
        if self.installed:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "purge", "-y", "-q", *self.installed], env=env, capture_output=True)
            subprocess.run(["apt-get", "autoremove", "--purge", "-y", "-q"], env=env, capture_output=True)
            self.installed = []
        if getattr(self, "_policy", False):
            POLICY_RC.unlink(missing_ok=True)
            self._policy = False

    # -- daemons ----------------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], user: str | None = None) -> None:
        log = open(self.root / f"log/{name}.out", "w")
        if user:
            cmd = ["runuser", "-u", user, "--", *cmd]
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def run(self, *cmd, check=True) -> subprocess.CompletedProcess:
        out = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=60)
        if check and out.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stdout}{out.stderr}")
        return out

    def _write_config(self) -> None:
        r = self.root
        for d in ("etc", "log", "state", "spool", "mysql", "run"):
            (r / d).mkdir(parents=True, exist_ok=True)
        # munged runs as user munge, who cannot enter a private temp dir (pytest's are 0700).
        self.munge = Path(tempfile.mkdtemp(prefix="histosynth-munge-"))
        self.munge.chmod(0o755)
        shutil.chown(self.munge, "munge", "munge")
        munge = f"socket={self.munge}/munge.socket"
        (r / "etc/slurm.conf").write_text(f"""\
ClusterName=histosynth
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo={munge}
CredType=cred/munge
SlurmctldPort={PORTS['ctld']}
SlurmdPort={PORTS['slurmd']}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MinJobAge=300
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={PORTS['dbd']}
AccountingStoragePass={self.munge}/munge.socket
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP
""")
        # Two stand-in GPUs (two GPU jobs at once): a gres without a File drains the node, so each
        # gets a character device that is not a GPU.
        (r / "etc/gres.conf").write_text(f"NodeName={self.host} Name=gpu File=/dev/null\n"
                                         f"NodeName={self.host} Name=gpu File=/dev/zero\n")
        dbd = r / "etc/slurmdbd.conf"
        dbd.write_text(f"""\
AuthType=auth/munge
AuthInfo={munge}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={PORTS['dbd']}
SlurmUser=root
PidFile={r}/run/slurmdbd.pid
LogFile={r}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={PORTS['mariadb']}
StorageUser=slurm
StoragePass=histosynth
StorageLoc=histosynth_acct
""")
        dbd.chmod(0o600)  # slurmdbd refuses a readable password file
        # At SLURM's default place too: the jobstep plugin drops SLURM_CONF from the environment of
        # the `srun` inside each job, which then reads /etc/slurm. What was there comes back at stop.
        self.saved = {}
        for name in ("slurm.conf", "gres.conf", "slurmdbd.conf"):
            path = ETC / name
            if path.exists() or path.is_symlink():
                self.saved[path] = path.with_name(f"{name}.histosynth-saved")
                os.replace(path, self.saved[path])
            ETC.mkdir(parents=True, exist_ok=True)
            path.symlink_to(r / "etc" / name)

    def start(self) -> "SlurmCluster":
        self._install()
        self._write_config()
        r = self.root
        # munge: its own socket, as user munge (the key the package created).
        m = self.munge
        self._spawn("munged", ["munged", "-F", f"--socket={m}/munge.socket", f"--pid-file={m}/munged.pid",
                               f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"], user="munge")
        _wait("munged", lambda: (m / "munge.socket").exists(), log=r / "log/munged.out")
        # MariaDB: a private instance on its own port, for slurmdbd.
        self.run("mariadb-install-db", f"--datadir={r}/mysql", "--user=root", "--auth-root-authentication-method=socket",
                 "--skip-test-db")
        self._spawn("mariadbd", ["mariadbd", "--no-defaults", f"--datadir={r}/mysql", "--user=root",
                                 f"--socket={r}/run/mysql.sock", f"--port={PORTS['mariadb']}",
                                 "--bind-address=127.0.0.1", f"--pid-file={r}/run/mysqld.pid"])
        _wait("mariadbd", lambda: _port_open(PORTS["mariadb"]), log=r / "log/mariadbd.out")
        sql = ("CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'histosynth';"
               "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'histosynth';"
               "GRANT ALL ON histosynth_acct.* TO 'slurm'@'127.0.0.1';"
               "GRANT ALL ON histosynth_acct.* TO 'slurm'@'localhost';")
        self.run("mariadb", "--no-defaults", f"--socket={r}/run/mysql.sock", "-uroot", "-e", sql)
        self._spawn("slurmdbd", ["slurmdbd", "-D"])
        _wait("slurmdbd", lambda: _port_open(PORTS["dbd"]), log=r / "log/slurmdbd.log")
        self.run("sacctmgr", "-i", "add", "cluster", "histosynth")
        self.run("sacctmgr", "-i", "add", "account", ACCOUNT, "Description=tests", "Organization=histosynth")
        self.run("sacctmgr", "-i", "add", "user", "root", f"Account={ACCOUNT}")
        self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-i"])
        _wait("slurmctld", lambda: self.run("scontrol", "ping", check=False).returncode == 0,
              log=r / "log/slurmctld.log")
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.host])
        _wait("an idle node", lambda: "idle" in self.run("sinfo", "-h", "-o", "%T", check=False).stdout,
              log=r / "log/slurmd.log")
        return self

    def stop(self) -> None:
        for p in reversed(self.procs):  # slurmd, slurmctld, slurmdbd, mariadbd, munged
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)  # its own session: runuser and the daemon under it
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        self.procs.clear()
        if getattr(self, "munge", None):
            shutil.rmtree(self.munge, ignore_errors=True)
        if hasattr(self, "saved"):
            for name in ("slurm.conf", "gres.conf", "slurmdbd.conf"):
                if (ETC / name).is_symlink():
                    (ETC / name).unlink()
            for path, saved in self.saved.items():
                os.replace(saved, path)
            self.saved = {}
        self._uninstall()

    def __enter__(self) -> "SlurmCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":  # python tests/slurm_cluster.py DIR: a cluster to try the profile on, until Ctrl-C
    import sys

    if len(sys.argv) != 2 or SlurmCluster.unavailable():
        raise SystemExit(SlurmCluster.unavailable() or "usage: python tests/slurm_cluster.py DIR")
    with SlurmCluster(Path(sys.argv[1])) as c:
        print(f"SLURM is up (account {ACCOUNT}, partitions cpu and gpu; /etc/slurm links to {c.root}/etc). "
              "Ctrl-C stops it and removes what it installed.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
