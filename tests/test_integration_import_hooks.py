"""``on_import``: code around and after the first import of a module, and at once when it is already imported."""

from __future__ import annotations

import contextlib
import sys

import pytest


@pytest.fixture()
def module_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("hooked_")]:
        del sys.modules[name]


def test_around_wraps_execution_and_after_follows(module_dir):
    from verl_agrae.integration.import_hooks import on_import

    (module_dir / "hooked_a.py").write_text("import builtins\nSEEN = list(builtins._hook_events)\n")
    events: list[str] = []
    import builtins

    builtins._hook_events = events  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def around():
        events.append("enter")
        yield
        events.append("exit")

    try:
        on_import("hooked_a", around=around, after=lambda: events.append("after"))
        on_import("hooked_a", around=around, after=lambda: events.append("twice"))  # one hook per name
        import hooked_a

        assert hooked_a.SEEN == ["enter"]  # the module ran inside `around`
        assert events == ["enter", "exit", "after"]
        assert hooked_a.__loader__ is hooked_a.__spec__.loader and type(hooked_a.__loader__).__name__ != "_ImportHook"
        import importlib

        importlib.reload(hooked_a)  # the real loader is back: no second round of hooks
        assert events == ["enter", "exit", "after"]
    finally:
        del builtins._hook_events  # type: ignore[attr-defined]


def test_after_runs_at_once_for_an_imported_module(module_dir):
    from verl_agrae.integration.import_hooks import on_import

    (module_dir / "hooked_b.py").write_text("X = 1\n")
    import hooked_b  # noqa: F401

    calls = []
    on_import("hooked_b", after=lambda: calls.append(1))
    assert calls == [1]
