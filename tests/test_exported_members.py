import crossscale
import crossscale.encode
import crossscale.index
import crossscale.rank
import crossscale.segment


def test_all_exports_exist_and_are_sorted() -> None:
    for module in (crossscale, crossscale.encode, crossscale.segment, crossscale.index, crossscale.rank):
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
    import builtins

    builtin_names = set(dir(builtins))
    assert not {e.__name__ for e in errors} & builtin_names  # nothing shadows a built-in


def test_stages_do_not_import_each_other() -> None:
    import ast
    from pathlib import Path

    root = Path(crossscale.__file__).parent
    stages = {"segment", "encode", "index", "rank"}
    for stage in stages:
        for file in (root / stage).glob("*.py"):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("crossscale."):
                    other = node.module.split(".")[1]
                    assert other not in stages - {stage}, f"{file.name} imports crossscale.{other}"
