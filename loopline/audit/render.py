"""The audit log as people read it: a plain-text listing for the terminal and a Markdown table
for the Prefect artifact.
"""

from __future__ import annotations

from collections.abc import Sequence

from loopline.audit.records import AuditRecord


def _when(record: AuditRecord) -> str:
    return record.at.strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def _version(record: AuditRecord) -> str:
    return f"v{record.version}" if record.version is not None else "-"


def render_text(records: Sequence[AuditRecord]) -> str:
    """One line per record, oldest first: when, kind, version, actor, summary."""
    kind_width = max((len(record.kind) for record in records), default=0)
    return "\n".join(f"{_when(record)}  {record.kind:<{kind_width}}  {_version(record):>5}  "
                     f"{record.actor}: {record.summary}" for record in records)


def _cell(text: str) -> str:
    # A pipe or a line break would end the Markdown table's cell.
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(model: str, records: Sequence[AuditRecord]) -> str:
    """A Markdown table of ``records`` (newest first) titled with the model's name."""
    if not records:
        return f"# {model}: audit trail\n\nNo changes recorded yet.\n"
    rows = [f"| {_when(r)} | `{r.kind}` | {_version(r)} | {_cell(r.actor)} | {_cell(r.summary)} |"
            for r in reversed(records)]
    return "\n".join([f"# {model}: the last {len(records)} changes", "",
                      "| when | kind | version | who | what |", "| --- | --- | --- | --- | --- |",
                      *rows, "", f"All of them: `loopline audit {model}`.", ""])
