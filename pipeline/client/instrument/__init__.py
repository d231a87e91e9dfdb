"""``agent_sre.instrument``: one call to send an agent's spans to agent-sre, credited to the agent.

    import agent_sre.instrument as sre

    sre.setup(agent_id="research-agent", agent_version="1.4.0", endpoint="http://127.0.0.1:4317")
    sre.instrument("openai")          # or "anthropic", "langgraph", "openai-agents", "crewai",
                                      # "autogen", "semantic-kernel", "llama-index"
    with sre.task("triage", session_id=session) as t:   # the task span: success, cost per task
        with sre.tool("web_search"):                     # a tool span, where nothing makes one
            ...
        if not good_enough:
            t.fail("no answer found")                    # else: success, or failure on an exception
    sre.shutdown()                                       # flush (also done at exit)

A thin layer over the instrumentations the field maintains (OpenInference, the official
OpenTelemetry GenAI instrumentations, OpenLLMetry, a framework's own OpenTelemetry support): it
installs none of them, names the exact ``pip install`` when the one it needs is missing, puts the
agent's id and version on the resource (so every span of the process is the agent's), and makes the
task span (``invoke_agent``, with ``agent.task.name`` and ``agent.task.success``) that most
frameworks do not.  Which instrumentation each name uses, and why: ``FRAMEWORKS``; docs/frameworks.md.

The standard library only at import: the OpenTelemetry API and SDK, the OTLP exporter and the
instrumentations are imported by the functions that use them.

    InstrumentError            setup() missing or done twice, or an instrumentation that failed
    └── MissingPackage         (also an ImportError) a package to install: ``.pip`` is the command
"""

from ._frameworks import FRAMEWORKS, Framework, Instrumentation, instrument
from ._provider import InstrumentError, MissingPackage, force_flush, setup, shutdown
from ._spans import Task, task, tool

__all__ = ["FRAMEWORKS", "Framework", "Instrumentation", "InstrumentError", "MissingPackage", "Task",
           "force_flush", "instrument", "setup", "shutdown", "task", "tool"]
