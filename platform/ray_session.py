"""The search's Ray: started (or joined) once per driver, and owned, so that a ``--resume``
after a killed driver can stop exactly what that driver's local Ray left running.

``RAY_ADDRESS`` joins a cluster (never stopped here); otherwise the search starts a local Ray,
locked down by ``local_only``: token authentication on, and its node address 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from trainables.errors import RankhouseError

# Ray Train V2 polls its workers every 2 s by default; on a short trial that is most of the
# overhead (see benchmarks/trial_overhead.py). Users may still override these.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
           # trials keep the driver's working directory (every path they get is absolute anyway)
           "RAY_CHDIR_TO_TRIAL_DIR": "0",
           # how long a reused trial process waits for the trial Tune stopped in it to let go
           # before the next trial there is failed (Ray's default, 2 s, failed 4 of 1,000 trials
           # while 64 trial processes started on 2 cores: benchmarks/scale.py)
           "TUNE_FUNCTION_THREAD_TIMEOUT_S": "60"}


# Ray turns a node address of 127.0.0.1 into the machine's network address, unless this is set:
# its local-only mode, the default on macOS and Windows. Read once, when Ray is imported.
LOCAL_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
              # on whatever Ray's default becomes: a local Ray demands a token (made by Ray in ~/.ray)
              "RAY_AUTH_MODE": "token"}


def local_only() -> None:
    """For a driver about to start a local Ray, before anything imports Ray: the node's address is
    127.0.0.1, so its dashboard, agents and metrics endpoints listen on loopback only. Ray's gRPC
    servers (GCS, raylet, workers) still listen on every interface, which no setting of Ray's
    changes; they refuse a caller without the token."""
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.update(LOCAL_ONLY)


SESSION_FILE = "ray-session.json"


OWNER_VAR = "RANKHOUSE_RAY_OWNER"  # in the environment of every process a local Ray of ours starts


def mark_ray_owner(out: Path) -> None:
    """Before a local Ray starts: a token every process it starts inherits, kept in the study
    folder so a --resume after a killed driver can stop exactly what that driver's Ray left
    running. Ray retitles its processes (command lines cannot tell whose they are), and its
    dashboard and runtime-env agents, which outlive a SIGKILLed driver, also overwrite their
    environment: ``record_ray_processes`` notes those by pid and start time once Ray is up."""
    if os.environ.get("RAY_ADDRESS"):
        return  # a cluster's Ray is not ours to stop
    token = f"{out}:{os.getpid()}:{os.urandom(4).hex()}"
    os.environ[OWNER_VAR] = token
    (out / SESSION_FILE).write_text(json.dumps({"owner": token, "driver": os.getpid()}))


def _start_time(pid: int) -> str | None:
    try:  # field 22 of /proc/PID/stat, after the parenthesised command name
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError):
        return None


def running(pid: int, started: str | None) -> bool:
    """The process ``pid`` that started at ``started`` still runs (a zombie does not: an orphan
    whose reaper does not reap keeps its /proc entry)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and started is not None and _start_time(pid) == started


def _parent(pid: int) -> int | None:
    try:
        line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("PPid:"))
        return int(line.split()[1])
    except (OSError, StopIteration):
        return None


def record_ray_processes(out: Path) -> None:
    """Once our local Ray is up: its processes and their children (the agents), by pid and start time."""
    record = out / SESSION_FILE
    if os.environ.get("RAY_ADDRESS") or not record.is_file():
        return
    info = json.loads(record.read_text())
    info["processes"] = ray_processes(info["owner"])
    record.write_text(json.dumps(info))


def ray_processes(token: str) -> list[list]:
    """[pid, start time] of the processes carrying ``token`` and of their children (the agents)."""
    owned = set(owned_by(token))
    children = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(int(p.name)) in owned}
    return [[pid, _start_time(pid)] for pid in sorted(owned | children) if pid != os.getpid()]


def stale_ray_processes(out: Path) -> list[int]:
    """Live processes of the local Ray a previous driver of this study started."""
    record = out / SESSION_FILE
    if not record.is_file():
        return []
    info = json.loads(record.read_text())
    found = set(owned_by(info["owner"]))
    found |= {pid for pid, started in info.get("processes", []) if running(pid, started)}
    return sorted(found - {os.getpid()})


def stop_stale_ray(out: Path) -> int:
    """Stop the processes of the local Ray a killed driver of this study started; returns how many."""
    import signal
    import time

    record = out / SESSION_FILE
    if not record.is_file():
        return 0
    info = json.loads(record.read_text())
    if _alive(info.get("driver")):
        raise RankhouseError(f"{out}: the search's driver (pid {info['driver']}) is still running; "
                             "stop it before --resume")
    stale = stale_ray_processes(out)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in stale:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if sig == signal.SIGTERM and stale:
            time.sleep(2)
    record.unlink()
    return len(stale)


def owned_by(token: str) -> list[int]:
    """Processes whose environment carries ``token``."""
    mark = f"{OWNER_VAR}={token}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if mark in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_ray() -> None:
    """Connect to ``RAY_ADDRESS`` (a cluster) or start a local Ray bound to 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ.get(k, v) for k, v in RAY_ENV.items()}
    os.environ.update(env)
    address = os.environ.get("RAY_ADDRESS")
    try:
        # "local": a Ray of this search's own, never a cluster someone left running on this machine
        ray.init(address=address or "local", runtime_env={"env_vars": env},
                 log_to_driver=bool(os.environ.get("RANKHOUSE_RAY_LOGS")),
                 **({} if address else {"_node_ip_address": "127.0.0.1"}))
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RankhouseError(f"cannot start or reach Ray (RAY_ADDRESS={address or 'unset'}): "
                             f"{' '.join(str(exc).split())[:300]}") from None


def launch_ray(out: Path) -> None:
    """Start (or join) the search's Ray once, marking a local one as this study's own (``--resume``
    stops what a killed driver's Ray left running)."""
    import ray

    if ray.is_initialized():
        return
    mark_ray_owner(out)
    start_ray()
    record_ray_processes(out)
