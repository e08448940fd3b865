"""A fresh Python interpreter for the import tests: what a module imports, and its messages."""

import os
import subprocess
import sys


def one_thread_env() -> dict[str, str]:
    """This process's environment for a child: one OpenMP thread, no warnings."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; fail with its stderr if it fails."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=one_thread_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done


def import_error_without(package: str, module: str) -> str:
    """The ``ImportError`` message of importing ``module`` when ``package`` is not installed.

    Fails if ``conopt.integrations`` itself imports ``package``.
    """
    code = (
        "import sys\n"
        "import conopt.integrations\n"
        f"assert {package!r} not in sys.modules, 'conopt.integrations imported {package}'\n"
        f"sys.modules[{package!r}] = None\n"
        "try:\n"
        f"    import {module}\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    return run_python(code).stdout
