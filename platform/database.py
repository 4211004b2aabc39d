"""The database behind a study's MLflow store and Optuna record (``tracking.backend``): SQLite
files in the output folder, the embedded default, or a PostgreSQL server that a team shares.

On PostgreSQL both live in one database: MLflow's tables in the default schema, the Optuna
record in the schema ``optuna``. They cannot share a schema: each tool keeps its own
``alembic_version`` table. The password belongs in ``~/.pgpass`` (mode 600), not in the URL,
which is printed and logged (with any password in it masked: ``tracking.redact``).
"""

from __future__ import annotations

import re
from pathlib import Path

from trainables.errors import RankhouseError
from trainables.tracking import redact

OPTUNA_SCHEMA = "optuna"


def is_postgres(url: str) -> bool:
    return re.match(r"postgresql(\+\w+)?://", url) is not None


def mlflow_store(backend: str, out: Path) -> str:
    return backend if is_postgres(backend) else f"sqlite:///{out / 'mlflow.db'}"


def optuna_record(backend: str, out: Path) -> str:
    if not is_postgres(backend):
        return f"sqlite:///{out / 'optuna.db'}"
    # libpq's own option: every connection of the record's engine looks in the optuna schema first
    return f"{backend}{'&' if '?' in backend else '?'}options=-csearch_path%3D{OPTUNA_SCHEMA}"


def check(backend: str, where: str, trials_elsewhere: bool = False) -> None:
    """Before any compute: the server answers and the record's schema exists (created here,
    so that Optuna's first connection finds it). ``trials_elsewhere``: trials run on other nodes
    and log to MLflow themselves, which a server on this node's loopback would not reach."""
    if not is_postgres(backend):
        return
    host = re.match(r"[^:]+://(?:[^@/]*@)?([^:/?]*)", backend).group(1)
    if trials_elsewhere and (host in ("", "localhost") or host.startswith("127.")):
        raise RankhouseError(f"{where}: tracking.backend {redact(backend)} is this node's own; trials on "
                             "other nodes cannot reach it: log through the tracking server, "
                             "tracking.uri=http://HEAD_PRIVATE_IP:5000")
    import sqlalchemy

    engine = None
    try:
        engine = sqlalchemy.create_engine(backend, connect_args={"connect_timeout": 10})
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {OPTUNA_SCHEMA}"))
    except ModuleNotFoundError as exc:
        raise RankhouseError(f"{where}: tracking.backend {redact(backend)} needs {exc.name}; "
                             'pip install "psycopg[binary]"') from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        raise RankhouseError(f"{where}: tracking.backend {redact(backend)}: {reason}; start the server or fix "
                             "the URL (the password comes from ~/.pgpass)") from None
    finally:
        if engine is not None:
            engine.dispose()
