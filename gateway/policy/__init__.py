"""Policies: who may call which connector action, with which parameters, how often, and with
whose approval.

`model` (the YAML schema), `load` (files to a `PolicySet`, errors as `file:line: reason`), `paths`
(a rule's field paths checked against the action's model), `expr` (eval-free approval conditions),
`engine` (the decision for one call), `store` (hot reload that never fails open), `approvals` (the
single-use, parameter-bound approval store), `report` (shadow-mode findings from the audit log).
"""

from gateway.faces import lazy_face

_FACE = {"PolicySet": "engine", "Decision": "engine", "Subject": "engine", "PolicyStore": "store", "load_policy_set": "load", "ApprovalStore": "approvals"}
__all__ = sorted(_FACE)
__getattr__ = lazy_face(__name__, _FACE)
