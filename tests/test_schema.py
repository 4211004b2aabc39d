"""The config schema is declared once (trainables/schema.py): the generated reference matches it,
code-written configs get its defaults, and a task's own keys join the generic ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainables import loop, schema
from trainables.errors import RankhouseError
from trainables.family import get_family

ROOT = Path(__file__).resolve().parents[1]


def test_docs_config_md_is_generated_from_the_schema():
    assert (ROOT / "docs" / "config.md").read_text() == schema.reference(), \
        "docs/config.md is stale: run python -m trainables.schema > docs/config.md"


def test_a_config_written_in_code_runs_with_the_documented_defaults():
    cfg = loop.complete({"model": {"family": "htdemucs", "sources": ["bass"]}, "optim": {"lr": 0.1}, "lora": None})
    assert cfg["optim"] == {"lr": 0.1, "schedule": "cosine", "warmup": 0.0, "weight_decay": 0.0, "grad_clip": 0.5}
    assert cfg["train"]["bf16"] is True and cfg["data"]["segment"] == 3.0  # separation's own key
    assert cfg["lora"] is None  # full training stays full training
    assert cfg["model"]["sources"] == ["bass"]


def test_a_tasks_options_join_the_generic_sections_and_are_validated():
    full = schema.for_family(get_family("htdemucs"))
    assert set(full["data"]) == {"root", "cache_dir", "embedded", "stems", "segment", "tolerance_db"}
    assert set(full["train"]) == set(schema.SCHEMA["train"]) | {"loss", "loss_quantile"}  # the task's, added
    assert "loss" not in schema.SCHEMA["train"]
    with pytest.raises(RankhouseError, match=r"^f: data.segment: -1.0; expected seconds > 0$"):
        schema.validate(full, {"study": "s", "model": {"sources": ["a"]}, "data": {"segment": -1}}, "f: ")
    with pytest.raises(RankhouseError, match=r"^f: model.sources: required; set it in the file or as model.sources="):
        schema.validate(full, {"study": "s"}, "f: ")


def test_a_key_is_declared_with_a_type_and_its_rule_in_words():
    with pytest.raises(ValueError, match="give a type"):
        schema.Key(None, "no type")
    with pytest.raises(ValueError, match="needs its expect text"):
        schema.Key(1, "a rule without words", rule=lambda v: v > 0)
    assert schema.Key(None, "nullable by default", type=int).nullable
