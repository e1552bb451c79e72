from advforensics.reporting import markdown_table


def test_markdown_table_formats_floats_none_and_bools() -> None:
    table = markdown_table([{"a": 1.23456, "b": None, "c": True}, {"a": 2, "b": "x|y", "c": False}])
    assert table.splitlines() == [
        "| a | b | c |",
        "| --- | --- | --- |",
        "| 1.23 | - | yes |",
        "| 2 | x\\|y | no |",
    ]


def test_markdown_table_empty() -> None:
    assert markdown_table([]) == "(no rows)"


def test_plots_write_pngs_of_the_figure_size(tmp_path) -> None:
    from PIL import Image

    from advforensics.reporting.plots import plot_accuracy_vs_copies, plot_confusion, plot_score_histograms

    panels = {rule: {"innocent": [0.1, 0.2, 0.3, 0.2], "source": [0.9, 1.0]} for rule in ("a", "b")}
    paths = [plot_score_histograms(panels, "hsj, alpha 0.1", tmp_path / "h.png"),
             plot_accuracy_vs_copies([2, 4], {"a": [0.9, 0.8]}, [0.5, 0.25], tmp_path / "s.png"),
             plot_confusion([[3, 1, 0], [0, 2, 2], [1, 0, 5]], ["x", "y", "z"], "attack confusion", tmp_path / "c.png")]
    assert paths == [tmp_path / "h.png", tmp_path / "s.png", tmp_path / "c.png"]
    # figsize x dpi: (4 per panel, 3) at 110; (5, 3.5) at 110; (1.2 + 0.6 n, 1.0 + 0.6 n) at 120
    assert [Image.open(p).size for p in paths] == [(880, 330), (550, 385), (360, 336)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "h.png", "s.png"]  # no temporaries left


def test_reporting_imports_neither_capability() -> None:
    import ast
    from pathlib import Path

    import advforensics.reporting

    for path in Path(advforensics.reporting.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(("advforensics.tracing", "advforensics.attribution")), (path.name, name)
