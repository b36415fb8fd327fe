"""orchestrator: reset wolkvox dialer campaigns in bulk, safely.

The public surface: load a plan, read its tokens, group it into lanes, run it.
"""

from orchestrator.errors import (
    CallTimeout,
    ConnectionFailed,
    ConnectionLost,
    OrchestratorError,
    OutcomeUnknown,
    PlanError,
    Problem,
    TransportError,
    UsageError,
)
from orchestrator.plan.model import Clear, Lane, OnFailure, Plan, Secret, Settings, TokenRef

__all__ = [
    "CallTimeout",
    "Clear",
    "ConnectionFailed",
    "ConnectionLost",
    "Lane",
    "OnFailure",
    "OrchestratorError",
    "OutcomeUnknown",
    "Plan",
    "PlanError",
    "Problem",
    "Secret",
    "Settings",
    "TokenRef",
    "TransportError",
    "UsageError",
]
__version__ = "0.1.0"
