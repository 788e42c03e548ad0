"""The example notebook runs, top to bottom, in a real kernel, and shows the results as pictures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "examples" / "quickstart.ipynb"


def test_the_notebook_is_committed_without_outputs() -> None:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)


def test_the_notebook_runs_and_draws_its_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from traitlets.config import Config

    for var in ("IPYTHONDIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))  # nothing written in $HOME
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",  # jupyter_client starts it with this interpreter (sys.executable)
        timeout=300,
        resources={"metadata": {"path": str(tmp_path)}},
        config=Config({"KernelManager": {"transport": "ipc", "ip": str(tmp_path / "kernel")}}),  # no TCP port
    )
    client.execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "added 8" in "".join(o.get("text", "") for o in code[0].outputs)
    first_search = code[1].outputs[-1]["data"]["text/html"]  # the result list, drawn by its _repr_html_
    assert first_search.count("<img") == 5  # the query and four parents
    assert first_search.index("astronaut") < first_search.index("#2")  # found at rank 1
    assert "image/png" in code[2].outputs[-1]["data"]  # best.crop(): a PIL image
    after_delete = code[3].outputs[-1]["data"]["text/html"]
    assert "astronaut" not in after_delete and after_delete.count("<img") == 5
