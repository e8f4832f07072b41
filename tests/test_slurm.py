"""The SLURM profile on a real SLURM: a single-node cluster on this machine.

The test starts munged, slurmctld and slurmd (Debian's `slurm-wlm`) on localhost, with four
fake GPUs (a `gpu` GRES whose device files are /dev/null, /dev/zero...) in partitions
named as in workflow/profiles/slurm. It runs the digits setting shrunk (tests/slurm/config.yaml),
up to its table, through that profile and, at the same time, locally with `--cores 2`;
cancels one running training job with `scancel`; and checks that every GPU rule ran as
its own SLURM job asking for one GPU, that the CPU-only rules asked for none, that the
cancelled job was resubmitted, and that both runs wrote the same table. It stops the
daemons it started, by their process ids.

The job step of the executor plugin drops `SLURM_*` variables, `SLURM_CONF` included, so
`srun` inside a job only finds the cluster through /etc/slurm/slurm.conf: the test writes
its cluster there (it needs root) and removes it afterwards, and skips when a slurm.conf
it did not write is already there. There is no accounting database, hence
`--slurm-status-command squeue` (with MinJobAge far above the plugin's threshold).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
CONFIGS = [ROOT / "config" / "digits.yaml", ROOT / "tests" / "slurm" / "config.yaml"]
SLURM_ETC = Path("/etc/slurm")  # where Debian's SLURM looks when SLURM_CONF is unset
MARKER = "# Test cluster of tests/test_slurm.py (removed when the test ends)"
LOCK = Path(tempfile.gettempdir()) / "piggyback-test-slurm.lock"
DAEMONS = ["slurmctld", "slurmd", "munged"]
CLIENTS = ["sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel"]
GPU_RULES = {"pretrain", "train", "evaluate", "evaluate_source"}  # start, evaluate_start: PackNet
CPU_RULES = {"prepare", "pack", "aggregate"}  # at least; any other rule is CPU-only too
LOCAL_RULES = {"download", "fetch_weights"}
FAKE_GPUS = ["/dev/null", "/dev/zero", "/dev/full", "/dev/urandom"]
RUN_TIMEOUT = 600  # seconds, for both Snakemake runs


def _program(name: str) -> str | None:
    """Daemons live in /usr/sbin, which a non-login PATH may lack."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return shutil.which(name, path=path)


def _clean_env() -> dict[str, str]:
    """This environment without settings that would point SLURM or Snakemake elsewhere
    (when the tests themselves run inside a SLURM job, say)."""
    prefixes = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "SCONTROL_", "SINFO_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.pop("SNAKEMAKE_PROFILE", None)
    return env


def _why_not() -> str | None:
    missing = [name for name in DAEMONS + CLIENTS if _program(name) is None]
    if missing:
        return (
            f"SLURM is not installed ({', '.join(missing)} not found): "
            "apt-get install slurm-wlm munge (what .ci/run does as root)"
        )
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed: pip install -e '.[slurm]'"
    if os.geteuid() != 0:
        return f"needs root: writes {SLURM_ETC}/slurm.conf and runs slurmd"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    with contextlib.ExitStack() as stack:
        for s in sockets:
            stack.enter_context(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _ours(path: Path) -> bool:
    return path.read_text().startswith(MARKER)


@dataclass
class Cluster:
    env: dict[str, str]
    logs: Path

    def run(self, *command: str, check: bool = True) -> str:
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)}: {result.stderr}\n{self.log_tails()}")
        return result.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld knows (finished ones stay for MinJobAge): its fields."""
        out = self.run("scontrol", "show", "job", "--oneliner", check=False)
        lines = [line for line in out.splitlines() if line.startswith("JobId=")]
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in lines]

    def log_tails(self, lines: int = 15) -> str:
        tails = []
        for log in sorted(self.logs.iterdir()):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(tails)


def _write_configs(runtime: Path, state: Path, logs: Path) -> tuple[str, str]:
    ctld_port, d_port = _free_ports(2)
    conf = f"""{MARKER}
ClusterName=piggyback-test
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={runtime}/munge.socket
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/d
SlurmctldPidFile={runtime}/slurmctld.pid
SlurmdPidFile={runtime}/slurmd.pid
SlurmctldLogFile={logs}/slurmctld.log
SlurmdLogFile={logs}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# Finished jobs stay visible to squeue (the plugin's status command) and scontrol.
MinJobAge=3600
# The node is declared, not probed: 4 CPUs (so that the jobs of a stage run at once,
# which matters more than cores: the plugin polls every 2, 12, 22... seconds until a job
# ends) and 4 GPUs, whatever the machine has.
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=4 RealMemory=8000 Gres=gpu:4 State=UNKNOWN
# Named as in workflow/profiles/slurm, so that the profile is used unchanged.
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
"""
    # A GPU needs a device file; any character device will do without cgroups.
    gres = "".join(
        f"{line}\n"
        for line in [MARKER, *(f"NodeName=localhost Name=gpu File={f}" for f in FAKE_GPUS)]
    )
    return conf, gres


def _stop(process: subprocess.Popen, seconds: float = 15) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def slurm(tmp_path):
    """A running single-node cluster; afterwards no job, daemon or file of it is left."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    lock = LOCK.open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        pytest.skip(f"another run of this test holds the test cluster ({LOCK})")

    files = {SLURM_ETC / "slurm.conf", SLURM_ETC / "gres.conf"}
    foreign = [str(p) for p in sorted(files) if p.exists() and not _ours(p)]
    if foreign:
        lock.close()
        pytest.skip(
            f"{', '.join(foreign)} exists and was not written by this test: a real "
            "SLURM is configured here, and this test will not overwrite it"
        )

    # munged wants every directory above its socket to be searchable by all.
    runtime = Path(tempfile.mkdtemp(prefix="piggyback-slurm-"))
    runtime.chmod(0o755)
    logs, state = tmp_path / "daemons", tmp_path / "state"
    for folder in (logs, state / "ctld", state / "d"):
        folder.mkdir(parents=True)
    made_etc = not SLURM_ETC.exists()
    env = _clean_env()
    cluster = Cluster(env, logs)
    daemons: list[subprocess.Popen] = []
    try:
        SLURM_ETC.mkdir(exist_ok=True)
        conf, gres = _write_configs(runtime, state, logs)
        (SLURM_ETC / "slurm.conf").write_text(conf)
        (SLURM_ETC / "gres.conf").write_text(gres)
        key = runtime / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)

        def start(*command: str) -> None:
            with (logs / f"{Path(command[0]).name}.out").open("w") as out:
                daemons.append(
                    subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
                )

        start(
            _program("munged"), "--foreground", f"--socket={runtime}/munge.socket",
            f"--key-file={key}", f"--pid-file={runtime}/munged.pid",
            f"--log-file={logs}/munged.log", f"--seed-file={runtime}/munged.seed",
        )  # fmt: skip
        _wait(lambda: (runtime / "munge.socket").exists(), "munged", cluster)
        start(_program("slurmctld"), "-D")
        start(_program("slurmd"), "-D", "-N", "localhost")
        _wait(
            lambda: (
                cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False).split()
                == ["idle", "idle"]
            ),  # one line per partition
            "the node to be idle",
            cluster,
        )
        yield cluster
    finally:
        try:
            _drain(cluster, daemons)
        finally:
            for process in reversed(daemons):
                _stop(process)
            for path in files:
                if path.exists() and _ours(path):
                    path.unlink()
            if made_etc:
                with contextlib.suppress(OSError):
                    SLURM_ETC.rmdir()
            shutil.rmtree(runtime, ignore_errors=True)
            lock.close()


def _wait(condition, what: str, cluster: Cluster, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{cluster.log_tails()}")
        time.sleep(0.5)


def _drain(cluster: Cluster, daemons: list[subprocess.Popen]) -> None:
    """Cancel whatever job is left and wait for its processes to end, while the daemons
    that would clean up after it still run."""
    if len(daemons) < 3 or any(d.poll() is not None for d in daemons):
        return
    active = ["PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING"]
    left = [j["JobId"] for j in cluster.jobs() if j.get("JobState") in active]
    if left:
        cluster.run("scancel", *left, check=False)
    _wait(
        lambda: not any(j.get("JobState") in active for j in cluster.jobs()),
        "cancelled jobs to end",
        cluster,
    )


def _snakemake(workdir: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    """Up to the table: the plots after it are CPU jobs like the others, one more
    polling round each run (tests/test_workflow_usage.py checks every rule's placement)."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
    command += [f"results/{_config()['name']}/table.tsv", "--configfile", *map(str, CONFIGS)]
    command += args
    with (workdir / "snakemake.log").open("w") as log:
        return subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)


def _finish(process: subprocess.Popen, workdir: Path, deadline: float) -> None:
    try:
        process.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # Snakemake then cancels its SLURM jobs
        _stop(process, 60)
    log = (workdir / "snakemake.log").read_text()
    assert process.returncode == 0, f"Snakemake in {workdir} failed:\n{log[-6000:]}"


def _config() -> dict:
    """The test's config as Snakemake merges the --configfile given."""
    config: dict = {}
    for path in CONFIGS:
        _merge(config, yaml.safe_load(path.read_text()))
    return config


def _cancel_a_running_training_job(
    cluster: Cluster, run: Path, snakemake: subprocess.Popen, deadline: float
) -> str:
    """The SLURM id of a training job cancelled while its training script ran."""
    config = _config()
    (arch,) = config["experiment"]["archs"]
    results = run / "results" / config["name"]
    logs = {  # the job's comment (as the plugin writes it) -> its rule log
        f"rule_train_wildcards_{arch}_{method}_0_{dataset}": (
            results / "logs" / "train" / arch / method / "run0" / f"{dataset}.log"
        )
        for method in config["experiment"]["methods"]
        for dataset in config["orderings"][config["experiment"]["orderings"][0]]
    }
    while time.monotonic() < deadline and snakemake.poll() is None:
        for job in cluster.jobs():
            log = logs.get(job.get("Comment", ""))
            if job.get("JobState") == "RUNNING" and log is not None and log.exists():
                cluster.run("scancel", job["JobId"])
                return job["JobId"]
        time.sleep(0.5)
    log = (run / "snakemake.log").read_text()
    raise AssertionError(f"no training job was seen running:\n{log[-6000:]}")


def _merge(config: dict, update: dict) -> None:
    """Snakemake's merge of several --configfile: mappings merge, the rest is replaced."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            _merge(config[key], value)
        else:
            config[key] = value


def _rule_and_wildcards(job: dict[str, str]) -> tuple[str, str]:
    """From the comment the plugin gives a job: rule_<rule>[_wildcards_<values>]."""
    comment = job.get("Comment", "")
    match = re.match(r"rule_(.+?)(?:_wildcards_(.*))?$", comment)
    assert match, f"job {job.get('JobId')} has no rule in its comment: {comment!r}"
    return match[1], match[2] or ""


def test_the_slurm_profile_runs_the_demo_on_a_real_slurm_like_a_local_run(slurm, tmp_path):
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    on_slurm.mkdir()
    local.mkdir()
    deadline = time.monotonic() + RUN_TIMEOUT
    cluster_run = _snakemake(
        on_slurm,
        "--workflow-profile", str(PROFILE),
        # No accounting database here: job states come from squeue.
        "--slurm-status-command", "squeue",
        "--slurm-no-account",
        "--slurm-init-seconds-before-status-checks", "2",
        env=slurm.env,
    )  # fmt: skip
    local_run = _snakemake(local, "--workflow-profile", "none", "--cores", "2", env=slurm.env)
    try:
        cancelled = _cancel_a_running_training_job(slurm, on_slurm, cluster_run, deadline)
        _finish(cluster_run, on_slurm, deadline)
        _finish(local_run, local, deadline)
    finally:
        for process in (cluster_run, local_run):
            _stop(process)

    config = _config()
    tasks = len(config["orderings"][config["experiment"]["orderings"][0]])
    methods = len(config["experiment"]["methods"])
    # each method also has a row for the backbone's source task (the ImageNet row)
    sources = sum(1 for entry in config["datasets"].values() if entry.get("source_task"))
    table = (local / "results" / "slurm" / "table.tsv").read_text()
    assert len(table.splitlines()) == 1 + methods * (tasks + sources)
    assert (on_slurm / "results" / "slurm" / "table.tsv").read_text() == table

    jobs = slurm.jobs()
    by_rule: dict[str, list[dict[str, str]]] = {}
    for job in jobs:
        by_rule.setdefault(_rule_and_wildcards(job)[0], []).append(job)
    assert not LOCAL_RULES & set(by_rule), "downloads run on the submitting host"
    assert set(by_rule) >= GPU_RULES | CPU_RULES
    for rule, rule_jobs in by_rule.items():
        for job in rule_jobs:
            gpus = re.search(r"gpu[:=](\d+)", job.get("TresPerJob", ""))
            if rule in GPU_RULES:
                assert gpus and gpus[1] == "1", f"{rule} job without one GPU: {job}"
                assert job["Partition"] == "gpu", job
            else:
                assert gpus is None, f"{rule} job asked for a GPU: {job}"
                assert job["Partition"] == "cpu", job

    # One job per GPU rule job of the workflow, and the cancelled one once more.
    assert len(by_rule["pretrain"]) == 1
    assert len(by_rule["train"]) == methods * tasks + 1  # and the cancelled one again
    assert len(by_rule["evaluate"]) == methods  # one per packed file, every task in it
    (killed,) = (job for job in jobs if job["JobId"] == cancelled)
    again = [job["JobState"] for job in jobs if job["Comment"] == killed["Comment"]]
    assert again == ["CANCELLED", "COMPLETED"], "the cancelled job was not resubmitted"
    comments = Counter(job["Comment"] for job in jobs)
    assert [c for c, n in comments.items() if n > 1] == [killed["Comment"]]

    # SLURM's log of every job, where the profile and the README say.
    for job in jobs:
        rule, wildcards = _rule_and_wildcards(job)
        log = on_slurm / "results" / "slurm_logs" / f"rule_{rule}" / wildcards
        assert (log / f"{job['JobId']}.log").is_file(), job
