"""Name the role of the verl process behind a training failure.

A dead Ray actor reaches the driver as a ``RayTaskError`` (the TaskRunner's ``run`` failed) wrapping an
``ActorDiedError`` whose text carries the dead actor's class (``class_name: HFRolloutServer``) and, for
verl's FSDP worker groups (all of class ``WorkerDict``), the TaskRunner's traceback with the call that was
waiting (``self.ref_policy_wg.compute_ref_log_prob(batch)``).
Users think in verl's roles (rollout, actor, reference policy, reward), not in Ray class names, so the
entry point's error message leads with the role.

Which roles one WorkerDict process hosts depends on the layout (verl fuses actor, rollout and reference into
one worker group unless the reference gets its own), so the waiting call alone can mislead: a fused worker
killed during ``ref_policy_wg.compute_ref_log_prob`` is the actor's process too. Our trainer therefore adds a
note to any exception leaving ``fit`` (``worker_layout_note``) that maps each worker's Ray actor id to the
groups it serves; ``failed_role`` reads the dead actor's id (Ray prints it) against that note.
"""

from __future__ import annotations

import re

# Ray actor classes of a verl run, by what they do. WorkerDict hosts the FSDP roles: the worker group
# attribute in the traceback tells which (ROLE_BY_WORKER_GROUP).
ROLE_BY_CLASS = {
    "TaskRunner": "task runner (verl's driver actor)",
    "TaskRunnerV1": "task runner (verl's driver actor)",
    "HFRolloutServer": "rollout server (`hf` backend)",
    "vLLMHttpServer": "rollout server (vLLM)",
    "SGLangHttpServer": "rollout server (SGLang)",
    "AgentLoopWorker": "agent loop worker (rollout requests)",
    "AgentLoopWorkerTQ": "agent loop worker (rollout requests)",
    "GlobalRequestLoadBalancer": "rollout request load balancer",
    "RewardLoopWorker": "reward worker",
    "TransferQueueController": "TransferQueue controller",
    "SimpleStorageUnit": "TransferQueue storage unit",
}
# verl's trainers drive the WorkerDict groups through these attributes; the TaskRunner's traceback (which
# the driver's error carries as text) shows the call that was waiting when the worker died.
ROLE_BY_WORKER_GROUP = {
    "actor_rollout_wg": "actor/rollout",
    "ref_policy_wg": "reference policy",
    "critic_wg": "critic",
    "rm_wg": "reward model",
}
LAYOUT_NOTE = "verl-agrae worker layout (Ray actor id = worker groups):"

_CLASS_NAME = re.compile(r"class_name:\s*([\w.<>]+)")
_ACTOR_ID = re.compile(r"actor_id:\s*([0-9a-f]+)")
_WORKER_GROUP_CALL = re.compile(r"\b(\w+_wg)\.(\w+)\(")
_LAYOUT_ENTRY = re.compile(r"\b([0-9a-f]{16,})=([\w,]+)")


def worker_layout_note(trainer: object) -> str:
    """One line naming, for every worker process of the trainer's FSDP worker groups, the groups it serves.

    Args:
        trainer: a verl trainer after ``init_workers``; groups it has not built are skipped.

    Returns:
        ``LAYOUT_NOTE`` followed by ``<actor id hex>=<group>[,<group>...]`` entries separated by ``; ``.
    """
    groups: dict[str, list[str]] = {}
    for name in ROLE_BY_WORKER_GROUP:
        # verl's RayWorkerGroup keeps its actor handles in `_workers` (verl itself reads `_actor_id` off them).
        for worker in getattr(getattr(trainer, name, None), "_workers", None) or []:
            actor_id = getattr(worker, "_actor_id", None)
            if actor_id is not None and name not in groups.setdefault(actor_id.hex(), []):
                groups[actor_id.hex()].append(name)
    return f"{LAYOUT_NOTE} " + "; ".join(f"{a}={','.join(g)}" for a, g in groups.items())


def _groups_of(actor_id: str, text: str) -> list[str]:
    for line in text.splitlines():
        if LAYOUT_NOTE in line:
            for entry_id, names in _LAYOUT_ENTRY.findall(line):
                if entry_id == actor_id:
                    return names.split(",")
    return []


def _fsdp_role(groups: list[str]) -> str:
    return "/".join(ROLE_BY_WORKER_GROUP[g] for g in groups if g in ROLE_BY_WORKER_GROUP) + " worker (FSDP)"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo.extend([e.__cause__, e.__context__, getattr(e, "cause", None)])
    return seen


def failed_role(exc: BaseException) -> str | None:
    """The verl role of the Ray actor whose death caused ``exc``, or None when no actor died.

    Args:
        exc: what ``ray.get`` (or verl's ``run_ppo``) raised in the driver.

    Returns:
        e.g. ``"rollout server (`hf` backend) [HFRolloutServer]"``; the Ray class name is kept in brackets.
    """
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    chain = _chain(exc)
    died = [e for e in chain if isinstance(e, ActorDiedError | ActorUnavailableError)]
    # A RayTaskError from the TaskRunner carries the inner error only as text (its traceback string).
    text = "\n".join(str(e) for e in chain)
    if not died and "ActorDiedError" not in text and "actor died" not in text.lower():
        return None
    # Ray may report a qualified name (`module.Class`, `func.<locals>.Class`): keep the class itself.
    names = [n.rsplit(".", 1)[-1] for n in _CLASS_NAME.findall("\n".join(str(e) for e in died) or text)]
    ids = _ACTOR_ID.findall("\n".join(str(e) for e in died) or text)
    # The innermost death is the cause; outer ones (the TaskRunner) only relayed it.
    for i in reversed(range(len(names))):
        name = names[i]
        if name == "WorkerDict":
            calls = [(g, m) for g, m in _WORKER_GROUP_CALL.findall(text) if g in ROLE_BY_WORKER_GROUP]
            where = f", in {calls[-1][0]}.{calls[-1][1]}" if calls else ""
            # Ray prints class_name and actor_id once per dead actor, in that order.
            hosted = _groups_of(ids[i], text) if len(ids) == len(names) else []
            if hosted:
                return f"{_fsdp_role(hosted)} [WorkerDict{where}]"
            if calls:  # no layout note (a trainer without our mixin): the waiting call's group is the best guess
                return f"{_fsdp_role([calls[-1][0]])} [WorkerDict{where}]"
            return "FSDP worker group [WorkerDict]"
        if name in ROLE_BY_CLASS:
            return f"{ROLE_BY_CLASS[name]} [{name}]"
    if names:
        return f"Ray actor {names[-1]}"
    return "a Ray actor (class not reported)"
