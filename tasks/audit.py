"""The audit log (:mod:`loopline.audit`) in Prefect: every record appended in a flow's process
is also emitted as the event ``loopline.audit.<kind>`` (the model as resource), and a flow ends
by publishing the model's last changes as a Markdown artifact.
"""

from __future__ import annotations

import logging

from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from loopline.audit import AuditRecord, add_audit_sink, audit_log
from loopline.audit.render import render_markdown
from loopline.naming import artifact_key, model_resource
from tasks.options import loopline_task

#: The event prefix: a record of kind ``registry.stage`` is ``loopline.audit.registry.stage``.
EVENT_PREFIX = "loopline.audit."
#: How many of the last changes the artifact shows.
ARTIFACT_RECORDS = 20

logger = logging.getLogger("loopline.audit")


def emit_audit_event(record: AuditRecord) -> None:
    """The sink: emit ``record`` as the Prefect event ``loopline.audit.<kind>`` with the model as
    its resource and the whole record as its payload.
    """
    resource = {"prefect.resource.id": model_resource(record.model),
                "prefect.resource.name": record.model}
    if record.version is not None:
        resource["loopline.version"] = str(record.version)
    emit_event(event=f"{EVENT_PREFIX}{record.kind}", resource=resource,
               payload=record.model_dump(mode="json"))


def install_audit_events() -> None:
    """Emit every audit record this process appends as a Prefect event (idempotent: flows call
    it from their first step, :func:`tasks.tracking.configure_mlflow_tracking`).
    """
    add_audit_sink(emit_audit_event)


@loopline_task(name="publish-audit")
def publish_audit_artifact(model: str, last: int = ARTIFACT_RECORDS) -> str:
    """Publish the model's last ``last`` audit records as the artifact ``<model>-audit``;
    returns its Markdown.
    """
    records = audit_log().records(model)[-last:]
    markdown = render_markdown(model, records)
    create_markdown_artifact(key=artifact_key(model, "audit"), markdown=markdown,
                             description=f"The last {len(records)} changes of {model}")
    return markdown
