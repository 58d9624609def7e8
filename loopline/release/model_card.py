"""Model cards: the human-readable account every registered model version carries."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from loopline.errors import IncompleteModelCard

#: Fields a card must fill before a version can be registered.
REQUIRED_FIELDS = ("description", "intended_use", "training_data")


class ModelCard(BaseModel):
    """What a model is, what it is for, what it was trained on, and how well it does.

    Attributes:
        description: what the model predicts.
        intended_use: what it is for, and what it is not for.
        training_data: which data and feature version it saw.
        performance: test metrics.
        limitations: known limitations.
        ethical_considerations: what was considered about fairness and harm.
        approved: whether a person approved the card; PRODUCTION requires it.
        approved_by: who approved it.
        approval_note: the approver's comment, or why the version was rejected (by whom, or
            that no decision came in time), when ``gates.approval`` asked a person to decide.
        sections: further sections, title to Markdown, in order: the per-group fairness table,
            the global feature importance, what was found and done about personal data.
    """

    model_config = ConfigDict(frozen=True)

    description: str
    intended_use: str
    training_data: str
    performance: dict[str, float] = Field(default_factory=dict)
    limitations: str = ""
    ethical_considerations: str = ""
    approved: bool = False
    approved_by: str | None = None
    approval_note: str = ""
    sections: dict[str, str] = Field(default_factory=dict)

    def missing_fields(self) -> list[str]:
        """Required fields that are empty."""
        return [name for name in REQUIRED_FIELDS if not getattr(self, name).strip()]

    def require_complete(self) -> None:
        """Raise :class:`IncompleteModelCard` naming every empty required field."""
        missing = self.missing_fields()
        if missing:
            raise IncompleteModelCard(f"the model card lacks: {', '.join(missing)}")

    def render_markdown(self, model_name: str, version: int | None = None) -> str:
        """The card as Markdown (stored as the MLflow version's description and published as a
        Prefect artifact).
        """
        title = f"# Model card: {model_name}" + (f" v{version}" if version is not None else "")
        approval = (f"approved by {self.approved_by}" if self.approved and self.approved_by
                    else "approved" if self.approved else "**not approved**")
        lines = [title, "", self.description, "", "## Intended use", "", self.intended_use, "",
                 "## Training data", "", self.training_data, "", "## Performance (test split)", ""]
        if self.performance:
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| {name} | {value:.4f} |" for name, value in sorted(self.performance.items())]
        else:
            lines.append("Not measured.")
        for title, body in self.sections.items():
            lines += ["", f"## {title}", "", body.rstrip("\n")]
        lines += ["", "## Limitations", "", self.limitations or "None stated.", "",
                  "## Ethical considerations", "", self.ethical_considerations or "None stated.",
                  "", "## Approval", "", approval, ""]
        if self.approval_note:
            lines += [self.approval_note, ""]
        return "\n".join(lines)
