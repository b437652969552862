"""`python -m src.db start|stop|status`: a local PostgreSQL cluster for the tracking server and Optuna's storage,
for a user who has none (`make db`). PostgreSQL's own tools do the work (initdb, pg_ctl, createdb); this only
finds them, runs them as a non-root user, and says which URI to use.

A development cluster: it listens on 127.0.0.1 only and trusts local connections (no password to leak). For a
shared server, use your organisation's PostgreSQL and its credentials.
"""

import argparse
import glob
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from src.core.errors import UserError
from src.core.schema import PROJECT_ROOT

DEFAULT_FOLDER = PROJECT_ROOT / ".cache" / "postgres"
DEFAULT_PORT = 5433  # beside, not on, a system PostgreSQL's 5432
ROLE = "mlflow"  # the database role that owns the databases
DATABASES = ("mlflow", "optuna")  # the tracking store's and the search's


class DatabaseError(UserError):
    """The local PostgreSQL cluster could not be found, made, started or stopped."""


def binaries() -> Optional[Path]:
    """The folder holding PostgreSQL's server programs (initdb, pg_ctl): on PATH, else Debian's newest version."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


@dataclass
class Cluster:
    """One PostgreSQL cluster in `folder`, serving 127.0.0.1:`port`."""

    folder: Path
    port: int

    def uri(self, database: str = "mlflow") -> str:
        """The SQLAlchemy URI of one of its databases (psycopg2: a bare postgresql:// picks psycopg 3)."""
        return f"postgresql+psycopg2://{ROLE}@127.0.0.1:{self.port}/{database}"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def start(self) -> None:
        """Create the cluster and its databases if new, then start it; waits until it takes connections."""
        bin_dir = binaries()
        if bin_dir is None:
            raise DatabaseError("PostgreSQL's server programs (initdb, pg_ctl) were not found: install them, e.g. "
                                "`apt-get install postgresql` on Debian, or point mlflow at an existing server")
        new = not (self.data / "PG_VERSION").exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        owner = _run_as()
        if owner is not None:  # initdb and postgres refuse to run as root
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        if new:
            self._run(bin_dir / "initdb", "-D", self.data, "-U", ROLE, "--auth=trust", "-E", "UTF8", "--no-instructions")
        log = self.folder / "server.log"
        self._run(bin_dir / "pg_ctl", "-D", self.data, "-l", log, "-w", "-t", "60", "start",
                  "-o", f"-h 127.0.0.1 -p {self.port} -k {self.folder}")
        if new:
            for database in DATABASES:
                self._run(bin_dir / "createdb", "-h", "127.0.0.1", "-p", self.port, "-U", ROLE, database)

    def stop(self) -> None:
        """Stop the cluster (its data stays for the next start)."""
        bin_dir = binaries()
        if bin_dir is None or not (self.data / "postmaster.pid").exists():
            return
        self._run(bin_dir / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        bin_dir = binaries()
        if bin_dir is None or not self.data.exists():
            return False
        return subprocess.run(self._as_owner([bin_dir / "pg_ctl", "-D", self.data, "status"]),
                              capture_output=True).returncode == 0

    def _run(self, *command) -> None:
        done = subprocess.run(self._as_owner(list(command)), capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["no output"])[-1]
            raise DatabaseError(f"{Path(str(command[0])).name} failed for the cluster in {self.folder}: {last}")

    def _as_owner(self, command: List) -> List[str]:
        owner = _run_as()
        argv = [str(part) for part in command]
        return argv if owner is None else ["runuser", "-u", owner.pw_name, "--", *argv]


def _run_as() -> Optional[pwd.struct_passwd]:
    """The non-root user PostgreSQL runs as when we are root (Debian's `postgres`, else `nobody`); None otherwise."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise DatabaseError("running as root with neither a `postgres` nor a `nobody` user to run PostgreSQL as")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.db",
                                     description=" ".join(__doc__.split("\n\n")[0].split()))  # the first paragraph
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help=f"the cluster's folder (default: {DEFAULT_FOLDER})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"the port on 127.0.0.1 (default: {DEFAULT_PORT})")
    args = parser.parse_args(argv)
    cluster = Cluster(args.folder.resolve(), args.port)
    try:
        if args.action == "start":
            cluster.start()
            print(f"PostgreSQL on 127.0.0.1:{args.port} (data in {cluster.data}); stop it with `make db-stop`\n"
                  f"tracking store:  make server DB={cluster.uri('mlflow')}\n"
                  f"search storage:  hydra.sweeper.storage={cluster.uri('optuna')}")
        elif args.action == "stop":
            cluster.stop()
            print(f"PostgreSQL in {cluster.data} stopped")
        else:
            print(f"PostgreSQL in {cluster.data}: {'running' if cluster.running() else 'not running'}")
            return 0 if cluster.running() else 1
    except UserError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0

