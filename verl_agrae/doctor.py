"""``verl-agrae doctor``: is the plugin live on every node of the Ray cluster?

verl swallows plugin import errors, so a node where verl-agrae is missing, broken or excluded by
``VERL_USE_EXTERNAL_PLUGINS`` fails only when a worker there looks up ``agrae`` — minutes into a job. The
doctor runs one task pinned to every alive node; each task starts a fresh Python interpreter (the way a new
Ray worker starts) that imports verl and reports versions, visible GPUs and whether ``agrae`` resolves to our
estimator. It exits non-zero on any missing registration or any version mismatch between nodes or with the
driver.

    verl-agrae doctor                  # connect to the running cluster (RAY_ADDRESS / "auto") or start a local one
    verl-agrae doctor --address HOST:PORT --json report.json
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys

logger = logging.getLogger(__name__)

VERSIONED = ("python", "torch", "verl", "vllm", "ray", "verl_agrae", "transformers")

# Runs in a fresh interpreter on each node: prints one JSON object.
PROBE = r"""
import importlib, json, os, platform, sys
out = {"python": platform.python_version(), "executable": sys.executable}
for name in ("torch", "verl", "vllm", "ray", "verl_agrae", "transformers"):
    try:
        from importlib.metadata import version
        out[name] = version({"verl_agrae": "verl-agrae"}.get(name, name))
    except Exception:
        out[name] = None
try:
    import torch
    out["gpus"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
except Exception as e:
    out["gpus"] = 0
out["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
out["plugins_policy"] = os.environ.get("VERL_USE_EXTERNAL_PLUGINS", "auto")
try:
    import verl
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY
    fn = ADV_ESTIMATOR_REGISTRY.get("agrae")
    out["agrae"] = None if fn is None else f"{fn.__module__}.{fn.__qualname__}"
except Exception as e:
    out["agrae"] = None
    out["error"] = f"{type(e).__name__}: {e}"
if out["agrae"] is None and "error" not in out:
    try:
        from verl_agrae.integration.estimator import ensure_registered
        ensure_registered()
    except Exception as e:
        out["error"] = str(e)
print(json.dumps(out))
"""

EXPECTED_ESTIMATOR = "verl_agrae.integration.estimator.agrae_advantage_estimator"


def probe_here(timeout: float = 300.0) -> dict:
    """Run the probe in a fresh interpreter of this Python, on this machine."""
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"agrae": None, "error": f"probe exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def probe_cluster(address: str | None, timeout: float) -> tuple[dict, list[dict]]:
    """Probe the driver and every alive Ray node. Returns ``(driver_report, node_reports)``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    started_here = False
    if address == "local":
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        started_here = True
    elif address:
        ray.init(address=address, log_to_driver=False)
    else:
        try:
            ray.init(address="auto", log_to_driver=False)
        except (ConnectionError, RuntimeError):
            logger.info("no running Ray cluster found; starting a local one")
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
            started_here = True
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]

        @ray.remote(num_cpus=0)
        def remote_probe() -> dict:
            return probe_here(timeout)

        refs = []
        for node in nodes:
            strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
            refs.append(remote_probe.options(scheduling_strategy=strategy).remote())
        reports = []
        for node, ref in zip(nodes, refs, strict=True):
            try:
                report = ray.get(ref, timeout=timeout)
            except Exception as e:  # a node that cannot run the probe is itself a finding
                report = {"agrae": None, "error": f"probe failed on node: {type(e).__name__}: {e}"}
            report["node"] = node.get("NodeManagerAddress", node["NodeID"][:12])
            report["ray_gpus"] = float(node.get("Resources", {}).get("GPU", 0))
            reports.append(report)
    finally:
        if started_here:
            ray.shutdown()
    return probe_here(timeout), reports


def find_problems(driver: dict, nodes: list[dict]) -> list[str]:
    """Every reason to fail: no nodes, `agrae` missing or foreign anywhere, versions differing."""
    problems = []
    if not nodes:
        problems.append("the Ray cluster has no alive node")
    for rep in [dict(driver, node="driver"), *nodes]:
        if rep.get("agrae") != EXPECTED_ESTIMATOR:
            why = rep.get("error") or f"registry holds {rep.get('agrae')!r}"
            problems.append(f"{rep['node']}: advantage estimator 'agrae' is not verl-agrae's ({why})")
    for key in VERSIONED:
        seen = {rep.get(key) for rep in nodes} | {driver.get(key)}
        if len(seen) > 1:
            detail = ", ".join(f"{r['node']}={r.get(key)}" for r in nodes)
            problems.append(f"{key} versions differ: driver={driver.get(key)}, {detail}")
    return problems


def format_table(driver: dict, nodes: list[dict]) -> str:
    cols = ["node", *VERSIONED, "gpus", "ray_gpus", "agrae"]
    rows = [dict(driver, node="driver", ray_gpus="-"), *nodes]
    cells = [
        [str(r.get(c, "")) if c != "agrae" else ("yes" if r.get("agrae") == EXPECTED_ESTIMATOR else "NO") for c in cols]
        for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="verl-agrae doctor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--address",
        help="Ray address; 'local' always starts a private local cluster "
        "(default: RAY_ADDRESS, then 'auto', then a local cluster)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each node's probe")
    parser.add_argument("--json", help="also write the full report to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    driver, nodes = probe_cluster(args.address, args.timeout)
    print(format_table(driver, nodes))
    problems = find_problems(driver, nodes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"driver": driver, "nodes": nodes, "problems": problems}, f, indent=1)
    if problems:
        print("\nverl-agrae doctor: FAILED", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"\nverl-agrae doctor: OK ({len(nodes)} node(s), 'agrae' registered everywhere)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
