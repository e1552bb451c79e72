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
