"""Whether this run is CI's, read once for the whole test suite.

Under CI a test never skips: ``tests/conftest.py`` turns every skip (a missing server, package,
tool or core) into a failure that gives the skip's reason. This module has no side effects
(unlike ``tests/conftest.py``, which moves the state folder when imported), so helpers that the
benchmarks import may use it too.
"""

from __future__ import annotations

import os

#: CI's own runs: ``CI=true`` in any case (GitHub, GitLab and others set it), or ``CI=1``.
IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1")
