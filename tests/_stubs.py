"""A stub protocol module for grid tests: a Config and a run() registered under a module name for the test."""
from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any


def register_protocol(monkeypatch: Any, name: str, config: type, run: Callable[[Any], dict]) -> None:
    """Make ``import name`` give a module with ``Config`` and ``run`` for this test (the grid imports protocols
    by module name)."""
    mod = types.ModuleType(name)
    mod.Config, mod.run = config, run
    monkeypatch.setitem(sys.modules, name, mod)
