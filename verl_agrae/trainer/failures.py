"""Name the role of the verl process behind a training failure.

A dead Ray actor reaches the driver as a ``RayTaskError`` (the TaskRunner's ``run`` failed) wrapping an
``ActorDiedError`` whose text carries the dead actor's class (``class_name: HFRolloutServer``) and, for
verl's FSDP worker groups (all of class ``WorkerDict``), the TaskRunner's traceback with the call that was
waiting (``self.ref_policy_wg.compute_ref_log_prob(batch)``).
Users think in verl's roles (rollout, actor, reference policy, reward), not in Ray class names, so the
entry point's error message leads with the role.
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
    "actor_rollout_wg": "actor/rollout/reference worker (FSDP)",
    "ref_policy_wg": "reference policy worker (FSDP)",
    "critic_wg": "critic worker (FSDP)",
    "rm_wg": "reward model worker",
}

_CLASS_NAME = re.compile(r"class_name:\s*([\w.<>]+)")
_WORKER_GROUP_CALL = re.compile(r"\b(\w+_wg)\.(\w+)\(")


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
    # The innermost death is the cause; outer ones (the TaskRunner) only relayed it.
    for name in reversed(names) if names else ():
        if name == "WorkerDict":
            for group, method in reversed(_WORKER_GROUP_CALL.findall(text)):
                if group in ROLE_BY_WORKER_GROUP:
                    return f"{ROLE_BY_WORKER_GROUP[group]} [WorkerDict, in {group}.{method}]"
            return "FSDP worker group [WorkerDict]"
        if name in ROLE_BY_CLASS:
            return f"{ROLE_BY_CLASS[name]} [{name}]"
    if names:
        return f"Ray actor {names[-1]}"
    return "a Ray actor (class not reported)"
