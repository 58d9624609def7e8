"""``make demo`` (``scripts/demo.py``) run once per session, in a fresh state folder on embedded
defaults, in the background from the start of the session (tests/head_start.py).
``tests/test_demo.py`` checks what it printed and left behind; the UI tier
(``tests/test_ui_e2e.py``) opens what it left in the Prefect and MLflow UIs, as its last lines
tell a person to, and carries the loop on from there (drift, retraining).

The ``made_demo`` fixture is registered for the whole session (``pytest_plugins`` in
tests/conftest.py): tests ask for it by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.head_start import finished


@dataclass(frozen=True)
class Demo:
    """What ``make demo`` left.

    Attributes:
        home: its state folder (LOOPLINE_HOME), where its Prefect database is too.
        env: the environment it ran in (none of the session's servers in it).
        stdout: what it printed.
    """

    home: Path
    env: dict[str, str]
    stdout: str

    @property
    def prefect_home(self) -> Path:
        """PREFECT_HOME, whose database holds the demo's runs and deployments."""
        return self.home / "prefect"

    @property
    def spec_path(self) -> Path:
        """The copy of ``configs/demo.yaml`` the demo ran on (its source: the demo's data)."""
        return self.home / "demo" / "demo.yaml"


@pytest.fixture(scope="session")
def made_demo() -> Demo:
    """``scripts/demo.py`` run to its end, as ``make demo`` runs it, in a state folder of its
    own (ahead of the tests, by tests/head_start.py); fails with its output unless it succeeded.
    """
    run = finished("demo")
    assert run.returncode == 0, run.output_tail()
    return Demo(home=run.home, env=run.env, stdout=run.stdout)
