"""Writing a ModelDeployment's PodDisruptionBudgets: one per track that needs one (decisions/render.py says
which), kept in step, and deleted when its track no longer needs one."""

from __future__ import annotations

from collections.abc import Iterable

from moe_operator.decisions.naming import MODEL_DEPLOYMENT_LABEL, Owner
from moe_operator.decisions.plan import in_step
from moe_operator.decisions.render import disruption_budget
from moe_operator.decisions.spec import ModelDeploymentSpec
from moe_operator.io.children import Writer, is_ours
from moe_operator.machinery.cache import ObjectCache

KIND = "PodDisruptionBudget"


def ensure_disruption_budgets(
    writer: Writer, cache: ObjectCache, owner: Owner, spec: ModelDeploymentSpec, tracks: Iterable[str]
) -> None:
    """`tracks`: those the pass runs (the stable one, and the canary's while there is one)."""
    wanted = [budget for track in tracks if (budget := disruption_budget(owner, spec, track)) is not None]
    for desired in wanted:
        observed = cache.get(KIND, owner.namespace, desired["metadata"]["name"])
        writer.check(observed)
        if observed is None:
            writer.create(desired)
        elif not in_step(desired, observed):
            writer.apply(desired, observed)
    keep = {budget["metadata"]["name"] for budget in wanted}
    for observed in cache.select(KIND, owner.namespace, {MODEL_DEPLOYMENT_LABEL: owner.name}):
        if observed["metadata"]["name"] not in keep and is_ours(observed, owner.uid):
            writer.delete(observed)
