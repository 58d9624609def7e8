"""Model cards: registration needs the required fields; the Markdown shows every section."""

from __future__ import annotations

import pytest

from loopline.errors import IncompleteModelCard, LooplineError
from loopline.release.model_card import REQUIRED_FIELDS, ModelCard


def card(**overrides: object) -> ModelCard:
    fields: dict[str, object] = {
        "description": "Predicts malignancy.",
        "intended_use": "Demonstrations only.",
        "training_data": "tumor-malignancy v1 (569 rows).",
        "performance": {"f1": 0.91234, "accuracy": 0.95},
        "limitations": "One hospital.",
        "ethical_considerations": "Clinicians review every prediction.",
        "approved": True,
        "approved_by": "ml-platform@example.com",
    }
    fields.update(overrides)
    return ModelCard.model_validate(fields)


def test_a_complete_card_passes() -> None:
    complete = card()
    assert complete.missing_fields() == []
    complete.require_complete()


@pytest.mark.parametrize("field", REQUIRED_FIELDS)
@pytest.mark.parametrize("empty", ["", "   ", "\n\t "])
def test_one_empty_required_field_is_named(field: str, empty: str) -> None:
    incomplete = card(**{field: empty})
    assert incomplete.missing_fields() == [field]
    with pytest.raises(IncompleteModelCard, match=field) as raised:
        incomplete.require_complete()
    assert isinstance(raised.value, LooplineError)
    assert raised.value.http_status == 422


def test_every_missing_field_is_named_at_once() -> None:
    empty = card(description="", intended_use="  ", training_data="\n")
    assert empty.missing_fields() == list(REQUIRED_FIELDS)
    with pytest.raises(IncompleteModelCard) as raised:
        empty.require_complete()
    message = str(raised.value)
    for field in ("description", "intended_use", "training_data"):
        assert field in message


def test_optional_fields_may_stay_empty() -> None:
    minimal = ModelCard(description="d", intended_use="u", training_data="t")
    minimal.require_complete()
    assert minimal.performance == {}
    assert not minimal.approved


def test_render_markdown_has_every_section_the_metrics_and_the_approval() -> None:
    text = card().render_markdown("tumor-malignancy", version=4)
    assert text.startswith("# Model card: tumor-malignancy v4\n")
    for section in ("## Intended use", "## Training data", "## Performance (test split)",
                    "## Limitations", "## Ethical considerations", "## Approval"):
        assert section in text
    for content in ("Predicts malignancy.", "Demonstrations only.", "tumor-malignancy v1 (569 rows).",
                    "One hospital.", "Clinicians review every prediction."):
        assert content in text
    assert "| metric | value |" in text
    assert "| accuracy | 0.9500 |" in text
    assert "| f1 | 0.9123 |" in text
    assert text.index("| accuracy |") < text.index("| f1 |")  # sorted by name
    assert "approved by ml-platform@example.com" in text
    # Sections appear in reading order.
    order = [text.index(s) for s in ("## Intended use", "## Training data", "## Performance",
                                     "## Limitations", "## Ethical considerations", "## Approval")]
    assert order == sorted(order)


def test_render_markdown_without_metrics_version_or_approval() -> None:
    text = card(performance={}, approved=False, approved_by=None, limitations="",
                ethical_considerations="").render_markdown("m")
    assert text.startswith("# Model card: m\n")
    assert "Not measured." in text
    assert "| metric | value |" not in text
    assert "**not approved**" in text
    assert text.count("None stated.") == 2


def test_approved_without_a_name_says_approved() -> None:
    text = card(approved=True, approved_by=None).render_markdown("m")
    approval = text.split("## Approval", 1)[1]
    assert "approved" in approval
    assert "not approved" not in approval
    assert "approved by" not in approval


def test_approver_without_approval_is_not_approved() -> None:
    text = card(approved=False, approved_by="someone").render_markdown("m")
    assert "**not approved**" in text
    assert "approved by someone" not in text
