"""The code in the docs runs: each example of docs/concepts.md's "Writing your own stage" is executed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _section_blocks(doc: Path, heading: str) -> list[str]:
    text = doc.read_text()
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end >= 0 else None], re.S)


BLOCKS = _section_blocks(DOCS / "concepts.md", "Writing your own stage")


def test_there_is_an_example_for_every_protocol() -> None:
    joined = "\n".join(BLOCKS)
    for member in (
        "def segment(",
        "def encode(",
        "def encode_regions(",
        "def window_map(",
        "def rank(",
        "def verify(",
        "def refine(",
    ):
        assert member in joined, member


@pytest.mark.parametrize("code", BLOCKS, ids=[f"example{i}" for i in range(len(BLOCKS))])
def test_write_your_own_stage_examples_run(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/concepts.md", "exec"), {"__name__": "docs_example"})  # our own docs


SCALING = _section_blocks(DOCS / "scaling.md", "The chunk index in Milvus")


def test_the_milvus_worked_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    pytest.importorskip("milvus_lite", reason="the milvus extra is not installed")
    example = next(code for code in SCALING if "milvus-ws" in code)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "docs/scaling.md", "exec"), {"__name__": "docs_example"})  # our own docs
    assert (tmp_path / "milvus-ws" / "milvus.db").exists()
