"""Topics are written in one place (linchpin_common.contract.topics): the
connector, the device and the gateway client build them from there."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every module of the connector, the device and the shared plumbing (the
# contract itself aside); rawws.py and wsframes.py build and read WebSocket
# frames, whose FIN and MASK bits are 0x80.
CHECKED = sorted(
    os.path.relpath(os.path.join(folder, name), ROOT)
    for top in ("linchpin_connector", "linchpin_common")
    for folder, _, files in os.walk(os.path.join(ROOT, top)) if "contract" not in folder
    for name in files if name.endswith(".py"))
NOT_SUBACK = {os.path.join("linchpin_common", "rawws.py"), os.path.join("linchpin_common", "wsframes.py")}


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
        elif (isinstance(node, ast.Constant) and type(node.value) is int and node.value == 0x80
              and path not in NOT_SUBACK):
            found.append(f"{path}:{node.lineno} 0x80 (topics.SUBACK_FAILURE)")
    return found


def message_literals(path: str) -> list[str]:
    """End-to-end message headers built by hand, and err codes written out,
    outside linchpin_common.contract.messages."""
    from linchpin_common.contract import messages

    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "t" for k in node.keys):
            found.append(f"{path}:{node.lineno} a message header written by hand")
        elif isinstance(node, ast.Compare) and any(
                isinstance(c, ast.Constant) and c.value in messages.KINDS | messages.ERROR_CODES
                for c in node.comparators):
            found.append(f"{path}:{node.lineno} a message kind or err code written out")
        elif isinstance(node, ast.Call) and any(
                isinstance(a, ast.Constant) and a.value in messages.ERROR_CODES for a in node.args):
            found.append(f"{path}:{node.lineno} an err code written out")
        elif isinstance(node, ast.Dict) and any(
                isinstance(k, ast.Constant) and k.value in messages.ERROR_CODES for k in node.keys):
            found.append(f"{path}:{node.lineno} an err code written out")
    return found


def test_no_message_literal_outside_the_contract():
    assert [hit for path in CHECKED for hit in message_literals(path)] == []


def check_source(tmp_path, check, source: str) -> list[str]:
    """What ``check`` finds in a file holding ``source``."""
    global ROOT
    saved, ROOT = ROOT, str(tmp_path)
    try:
        (tmp_path / "x.py").write_text(source)
        return check("x.py")
    finally:
        ROOT = saved


def test_the_check_finds_a_hand_made_message(tmp_path):
    found = check_source(tmp_path, message_literals,
                         'h = {"t": "ack", "id": 1}\nif k == "cancel": pass\nf("busy", "x")\n')
    assert [hit.split(" ", 1)[0] for hit in found] == ["x.py:1", "x.py:2", "x.py:3"]


def test_no_topic_literal_outside_the_contract():
    assert "linchpin_connector/connector.py" in CHECKED and "linchpin_connector/device/client.py" in CHECKED
    assert [hit for path in CHECKED for hit in topic_literals(path)] == []


def test_the_check_finds_a_literal(tmp_path):
    found = check_source(tmp_path, topic_literals, '"""devices/<D>/up in a docstring is fine"""\nT = f"devices/{1}/down"\n')
    assert found == ["x.py:2 'devices/'"]
