"""Find an adapter bundle by reference: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
``runs:/RUN_ID/adapter`` or a local folder, and fetch it to a local folder.

``models:/`` and ``runs:/`` need the tracking store that holds them: ``--tracking-uri``, else
``MLFLOW_TRACKING_URI``, else the store of the search space in ``search_spaces/`` whose
``registry.model_name`` is NAME (what ``platform.promote`` registered into).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from platform import database
from trainables import tracking
from trainables.errors import RankhouseError

SPACES = Path("search_spaces")


def store_of_model(name: str) -> str | None:
    """The default tracking URI of the search space that registers ``name`` (read as plain YAML:
    a registry lookup must not depend on Hydra composing a whole study)."""
    for file in sorted(SPACES.glob("*.yaml")):
        try:
            raw = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError:
            continue
        if isinstance(raw, dict) and (raw.get("registry") or {}).get("model_name") == name:
            t = raw.get("tracking") or {}
            out = Path(t.get("output") or Path("runs") / str(raw.get("study"))).resolve()
            return t.get("uri") or database.mlflow_store(t.get("backend") or "sqlite", out)
    return None


def tracking_uri_for(ref: str, given: str | None) -> str:
    if given or os.environ.get("MLFLOW_TRACKING_URI"):
        return given or os.environ["MLFLOW_TRACKING_URI"]
    m = re.match(r"models:/([^/@]+)", ref)
    uri = store_of_model(m.group(1)) if m else None
    if uri is None:
        raise RankhouseError(f"--model {ref}: which tracking store? pass --tracking-uri (e.g. "
                             "sqlite:///runs/techhouse/mlflow.db) or set MLFLOW_TRACKING_URI")
    return uri


def model_version(client, ref: str):
    """The registered version a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` points to."""
    from mlflow.exceptions import MlflowException

    m = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", ref)
    if not m:
        raise RankhouseError(f"--model {ref}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, version = m.groups()
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        raise RankhouseError(f"--model {ref}: not in the registry at {client._registry_uri} "
                             f"({exc.message.splitlines()[0][:200]}); promote one first: python -m platform.promote STUDY") \
            from None


def download_run_folder(uri: str, run_id: str, path: str, dst: Path) -> Path:
    """A run's artifact folder, downloaded (a local file store is copied, never used in place)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # our own progress is enough
    try:
        return Path(download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst), tracking_uri=uri))
    except (MlflowException, OSError) as exc:
        raise RankhouseError(f"run {run_id}: no artifact {path!r} ({str(exc).splitlines()[0][:200]}); "
                             "the trial finished no epoch, or its artifacts were deleted") from None


def fetch(ref: str, dst: Path, tracking_uri: str | None = None) -> tuple[Path, dict]:
    """A local bundle folder for ``ref`` and where it came from."""
    if ref.startswith("models:/"):
        uri = tracking_uri_for(ref, tracking_uri)
        mv = model_version(tracking.client(uri), ref)
        run_id, path = parse_runs_uri(mv.source)
        return download_run_folder(uri, run_id, path, dst), {"uri": uri, "name": mv.name, "version": mv.version,
                                                             "run_id": run_id}
    if ref.startswith("runs:/"):
        uri = tracking_uri_for(ref, tracking_uri)
        run_id, path = parse_runs_uri(ref)
        return download_run_folder(uri, run_id, path, dst), {"uri": uri, "run_id": run_id}
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        raise RankhouseError(f"--model {ref}: no such folder (expected models:/NAME@ALIAS, runs:/RUN_ID/adapter "
                             "or an adapter folder)")
    return folder, {"path": str(folder.resolve())}


def parse_runs_uri(source: str) -> tuple[str, str]:
    m = re.fullmatch(r"runs:/([0-9a-f]+)/(.+)", source)
    if not m:
        raise RankhouseError(f"{source}: expected runs:/RUN_ID/PATH")
    return m.group(1), m.group(2)


def load_for(ref: str, task: str, command: str, tracking_uri: str | None = None, base: str | None = None):
    """The adapter bundle ``ref`` rebuilt on its base (``bundle.load``), refused unless its
    family's task is ``task``: what ``command`` runs. Returns the loaded bundle and where it came from."""
    import tempfile

    from trainables import bundle

    with tempfile.TemporaryDirectory(prefix="rankhouse-adapter-") as tmp:
        folder, origin = fetch(ref, Path(tmp) / "adapter", tracking_uri)
        loaded = bundle.load(folder, base)
    if loaded.family.task.name != task:
        raise RankhouseError(f"--model {ref}: a {loaded.family.task.name} adapter ({loaded.manifest['family']}); "
                             f"{command} runs {task} models")
    return loaded, origin
