"""The examples of docs/PYTHON.md run as written (against a test daemon)."""

from __future__ import annotations

import pathlib
import re

import shardd

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "PYTHON.md"


def example(title: str) -> str:
    text = DOC.read_text()
    section = text[text.index(title):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_layer_by_layer_example_is_ten_lines_and_computes_the_model(daemon, torch):
    code = example("## Offloading a model's layers")
    assert len(code.strip().splitlines()) <= 10
    torch.manual_seed(0)
    scope = {}
    exec(code.replace("unix://./shardd.sock", daemon.unix), scope)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(8)])
    x = torch.randn(4, 1024)
    with torch.no_grad():
        assert torch.equal(scope["x"], model(x))
    assert len(shardd.Client(daemon.unix).ls("demo")) == 16, "eight weights, each partition and manifest"
