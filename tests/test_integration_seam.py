"""The seam: no module outside ``verl_agrae/integration/`` writes into verl.

A static check over the package's source: in every module, the names bound to verl (``import verl...``,
``from verl... import X``) are tracked, and any of these outside the integration package fails the test:
assignment to an attribute or item of a verl object (``core_algos.fn = ...``, ``REGISTRY[k] = ...``), ``setattr`` /
``delattr`` on one, a mutating method call on one (``REGISTRY.update(...)``), or a call of a verl ``register*``
function or method (``register_trainer(...)``, ``PlatformRegistry.register(...)``), decorators included. The detector
is itself checked on hand-written snippets and on the integration package, where such writes must be found.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import verl_agrae

PACKAGE = Path(verl_agrae.__file__).parent
INTEGRATION = PACKAGE / "integration"
_MUTATORS = {"update", "setdefault", "pop", "popitem", "clear", "append", "extend", "insert", "remove", "add"}


def _root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def verl_writes(source: str) -> list[str]:
    """Every place in ``source`` that writes into verl, as ``line: what``."""
    tree = ast.parse(source)
    bound: set[str] = set()
    for node in ast.walk(tree):  # function-local imports count too
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "verl" or a.name.startswith("verl."):
                    bound.add(a.asname or "verl")
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and (node.module == "verl" or node.module.startswith("verl."))
        ):
            bound.update(a.asname or a.name for a in node.names)
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        for t in targets:
            if isinstance(t, (ast.Attribute, ast.Subscript)) and _root(t) in bound:
                found.append(f"{node.lineno}: assigns {ast.unparse(t)}")
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name in ("setattr", "delattr") and node.args and _root(node.args[0]) in bound:
                found.append(f"{node.lineno}: {name} on {ast.unparse(node.args[0])}")
            elif _root(fn) in bound and "register" in name.lower():
                found.append(f"{node.lineno}: calls {ast.unparse(fn)}")
            elif isinstance(fn, ast.Attribute) and name in _MUTATORS and _root(fn.value) in bound:
                found.append(f"{node.lineno}: mutates {ast.unparse(fn.value)}")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for dec in node.decorator_list:
                if not isinstance(dec, ast.Call) and _root(dec) in bound and "register" in ast.unparse(dec).lower():
                    found.append(f"{dec.lineno}: decorator {ast.unparse(dec)}")
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "from verl.trainer.ppo import core_algos\ncore_algos.compute_grpo_outcome_advantage = None",
        "import verl.trainer.ppo.core_algos as ca\nca.ADV_ESTIMATOR_REGISTRY['x'] = f",
        "from verl.workers.rollout.base import _ROLLOUT_REGISTRY\n_ROLLOUT_REGISTRY[('hf', 'async')] = 'a.B'",
        "from verl.workers.rollout.base import _ROLLOUT_REGISTRY\n_ROLLOUT_REGISTRY.update({})",
        "def f():\n    from verl.plugin.platform import PlatformRegistry\n"
        "    PlatformRegistry.register(platform='cpu')(C)",
        "from verl.checkpoint_engine.base import CheckpointEngineRegistry\n"
        "@CheckpointEngineRegistry.register('gloo')\nclass E: pass",
        "from verl.trainer.ppo.v1.trainer_base import register_trainer\n@register_trainer('x')\nclass T: pass",
        "from verl.trainer.ppo.core_algos import register_adv_est\nregister_adv_est('x')(f)",
        "import verl.utils.distributed as d\nsetattr(d, 'initialize_global_process_group_ray', f)",
        "import verl\nverl.trainer.ppo.v1.trainer_separate_async.logger = x",
    ],
)
def test_detector_finds_writes_into_verl(snippet):
    assert verl_writes(snippet), snippet


def test_detector_ignores_reads_and_local_objects():
    src = (
        "import verl\nfrom verl import DataProto\nfrom verl.trainer.ppo.core_algos import get_adv_estimator_fn\n"
        "fn = get_adv_estimator_fn('agrae')\ndata = DataProto.from_dict({})\ndata.meta_info['x'] = 1\n"
        "class Mine(DataProto):\n    pass\nself_registry = {}\nself_registry['a'] = 1\n"
    )
    assert verl_writes(src) == []


def test_only_the_integration_package_writes_into_verl():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if INTEGRATION in path.parents:
            continue
        found = verl_writes(path.read_text(encoding="utf-8"))
        if found:
            offenders[str(path.relative_to(PACKAGE.parent))] = found
    assert not offenders, f"writes into verl outside verl_agrae/integration/: {offenders}"


def test_the_integration_package_is_where_the_writes_are():
    """The detector sees the real registrations and patches, so the check above is not vacuous."""
    found = {p.name: verl_writes(p.read_text(encoding="utf-8")) for p in INTEGRATION.glob("*.py")}
    assert found["backends.py"] and found["patches.py"] and found["estimator.py"] and found["trainers.py"]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        (["advantage.py", "config.py", "diagnostics.py", "atomic.py"], ("verl", "verl_agrae.integration")),
        (["reward", "data", "eval"], ("verl", "verl_agrae.integration")),
        (["platform", "rollout", "checkpoint_engine"], ("verl_agrae.integration",)),
    ],
)
def test_layers_import_only_what_docs_architecture_allows(layer, forbidden):
    bad = {}
    for part in layer:
        for path in [PACKAGE / part] if part.endswith(".py") else sorted((PACKAGE / part).rglob("*.py")):
            hits = [m for m in _imports(path) if any(m == f or m.startswith(f + ".") for f in forbidden)]
            if hits:
                bad[str(path.relative_to(PACKAGE))] = hits
    assert not bad, bad
