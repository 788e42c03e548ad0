import ast
import builtins
from pathlib import Path

import crossscale
import crossscale.display
import crossscale.distributed
import crossscale.encode
import crossscale.index
import crossscale.ingest
import crossscale.measure
import crossscale.protocols
import crossscale.query
import crossscale.rank
import crossscale.segment
import crossscale.types
import crossscale.workspace

MODULES = (
    crossscale,
    crossscale.encode,
    crossscale.segment,
    crossscale.index,
    crossscale.rank,
    crossscale.protocols,
    crossscale.types,
    crossscale.workspace,
    crossscale.ingest,
    crossscale.measure,
    crossscale.query,
    crossscale.display,
    crossscale.distributed,
)
ROOT = Path(crossscale.__file__).parent
STAGES = {"segment", "encode", "index", "rank"}
#: the layer above the stages: only these compose them.
FACADE = {"workspace", "ingest", "query", "search", "_stages", "cli", "demo", "distributed"}


def test_all_exports_exist_and_are_sorted() -> None:
    for module in MODULES:
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
        assert len(set(module.__all__)) == len(module.__all__), f"{module.__name__}.__all__ repeats a name"
        assert module.__all__ == sorted(module.__all__), f"{module.__name__}.__all__ is not sorted"


def test_exception_tree() -> None:
    errors = [getattr(crossscale, n) for n in crossscale.__all__ if n.endswith("Error")]
    assert all(issubclass(e, crossscale.CrossScaleError) for e in errors)
    assert issubclass(crossscale.ConfigurationError, ValueError)
    assert issubclass(crossscale.ParentNotFoundError, LookupError)
    assert issubclass(crossscale.MissingDependencyError, ImportError)
    builtin_names = set(dir(builtins))
    assert not {e.__name__ for e in errors} & builtin_names  # nothing shadows a built-in


def _imported(file: Path) -> set[str]:
    """The first-level crossscale modules ``file`` imports (``crossscale.index.x`` -> ``index``)."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("crossscale."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("crossscale."))
    return found


def test_stages_import_neither_each_other_nor_the_facade() -> None:
    for stage in STAGES:
        for file in (ROOT / stage).glob("*.py"):
            wrong = _imported(file) & ((STAGES - {stage}) | FACADE)
            assert not wrong, f"{stage}/{file.name} imports crossscale.{sorted(wrong)}"


def test_shared_modules_import_no_stage() -> None:
    shared = ("types", "protocols", "errors", "display", "_checks", "_vectors", "_images", "_files", "_forward")
    for name in (*shared, "_device", "_registry", "measure"):
        wrong = _imported(ROOT / f"{name}.py") & (STAGES | FACADE)
        assert not wrong, f"{name}.py imports crossscale.{sorted(wrong)}"


def test_the_query_path_needs_no_workspace() -> None:
    """The benchmark and other callers run it on an in-memory index: it must not depend on the disk layer."""
    assert not _imported(ROOT / "query.py") & {"workspace", "search", "index", "ingest"}


def test_the_builtin_stages_satisfy_their_protocols(tmp_path: Path) -> None:
    from crossscale.encode import ColorHistogramEncoder
    from crossscale.protocols import Encoder, Ranker, Refiner, Segmenter, VectorIndex

    assert isinstance(ColorHistogramEncoder(), Encoder)
    assert isinstance(crossscale.TileSegmenter(), Segmenter) and isinstance(crossscale.WholeSegmenter(), Segmenter)
    assert isinstance(crossscale.ParentRanker(), Ranker)
    assert isinstance(crossscale.RegionRefiner(ColorHistogramEncoder()), Refiner)
    assert isinstance(crossscale.ChunkIndex(8, device="cpu"), VectorIndex)
