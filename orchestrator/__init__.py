"""orchestrator: reset wolkvox dialer campaigns in bulk, safely.

The command line (:mod:`orchestrator.cli`) is the interface; README.md describes it.
The parts, in the order a run flows through them: :mod:`orchestrator.plan` (the plan
file, its rules, its tokens), :mod:`orchestrator.run` (prepare, then execute),
:mod:`orchestrator.wolkvox` (the API client and its simulator),
:mod:`orchestrator.state` (the journal and the token locks) and
:mod:`orchestrator.output` (log, progress, report, metrics).
"""
