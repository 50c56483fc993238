"""Topics are written in one place (linchpin_common.contract.topics): the
connector, the device and the gateway client build them from there."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKED = ["linchpin_connector/connector.py", "linchpin_common/gateway_client.py",
           "linchpin_common/mqtt_client.py"]
CHECKED += [os.path.join("linchpin_connector/device", name)
            for name in sorted(os.listdir(os.path.join(ROOT, "linchpin_connector/device"))) if name.endswith(".py")]


def topic_literals(path: str) -> list[str]:
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if node.value.startswith("devices/") or "$gateway" in node.value:
                found.append(f"{path}:{node.lineno} {node.value!r}")
        elif isinstance(node, ast.Constant) and node.value == 0x80 and type(node.value) is int:
            found.append(f"{path}:{node.lineno} 0x80 (topics.SUBACK_FAILURE)")
    return found


def test_no_topic_literal_outside_the_contract():
    assert [hit for path in CHECKED for hit in topic_literals(path)] == []


def test_the_check_finds_a_literal(tmp_path):
    global ROOT
    saved, ROOT = ROOT, str(tmp_path)
    try:
        (tmp_path / "x.py").write_text('"""devices/<D>/up in a docstring is fine"""\nT = f"devices/{1}/down"\n')
        assert topic_literals("x.py") == ["x.py:2 'devices/'"]
    finally:
        ROOT = saved
