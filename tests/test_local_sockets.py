"""A local search's Ray is locked down (platform/ray_session.local_only): every socket any process
of the search listens on is bound to loopback, and token authentication is on (Ray's dashboard
refuses a request without the token)."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        try:
            status = (proc / "status").read_text() if proc.name.isdigit() else ""
        except OSError:
            continue
        ppid = re.search(r"^PPid:\s+(\d+)", status, re.M)
        if ppid:
            children.setdefault(int(ppid.group(1)), []).append(int(proc.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def listening_sockets(pids: set[int]) -> list[tuple[ipaddress._BaseAddress, int, str]]:
    """(address, port, process name) of every TCP socket in LISTEN state that ``pids`` hold, read
    from /proc/net/tcp{,6} and each process's file descriptors."""
    owner = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
                if m:
                    owner[m.group(1)] = pid
        except OSError:
            continue
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in owner:  # 0A: LISTEN
                continue
            raw, port = fields[1].split(":")
            # the kernel prints each 32-bit word of the address in host (little-endian) order
            packed = b"".join(bytes.fromhex(raw[i:i + 8])[::-1] for i in range(0, len(raw), 8))
            address = ipaddress.ip_address(packed)
            name = Path(f"/proc/{owner[fields[9]]}/comm").read_text().strip()
            found.append((getattr(address, "ipv4_mapped", None) or address, int(port, 16), name))
    return found


@pytest.mark.slow
def test_every_socket_of_a_local_search_is_loopback_and_ray_wants_the_token(tiny_search, tmp_path):
    secret = tmp_path / "auth_token"  # the token the search's Ray uses (Ray's own default: ~/.ray)
    secret.write_text(uuid.uuid4().hex)
    secret.chmod(0o600)
    log = tmp_path / "search.log"
    env = {k: v for k, v in tiny_search.env.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    with open(log, "w") as out:
        proc = subprocess.Popen(tiny_search.cmd("search.num_samples=1", "train.epochs=8", "train.steps_per_epoch=4"),
                                cwd=ROOT, env={**env, "RAY_AUTH_TOKEN_PATH": str(secret)}, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while "epoch 1/8" not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(1)
        assert proc.poll() is None, log.read_text()[-3000:]  # mid-trial: Ray and every agent are up
        sockets = listening_sockets(descendants(proc.pid))
        names = {name for _, _, name in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets
        assert [s for s in sockets if not s[0].is_loopback] == [], sockets
        dashboard = next(port for address, port, _ in sockets if port == 8265)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/api/version", timeout=30)
        assert refused.value.code == 401
        request = urllib.request.Request(f"http://127.0.0.1:{dashboard}/api/version",
                                          headers={"Authorization": f"Bearer {secret.read_text()}"})
        with urllib.request.urlopen(request, timeout=30) as answered:
            assert answered.status == 200
    finally:
        proc.kill()
        proc.wait(timeout=60)
        from platform.ray_session import stop_stale_ray

        stop_stale_ray(tiny_search.out)  # the Ray the killed driver started
