"""The set-up tells the truth: what the docs tell an operator to type exists,
and `make test` installs everything the tests use on a fresh machine (Python
packages from setup.py into .venv, at the versions requirements.lock pins,
commands from tools/system-packages.sh).

A package or command missing from those lists passes on a machine where it
happens to be installed and breaks the first fresh run of CI; these checks
catch it here instead.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
# Modules the tests run that are not under tests/ (shared with bench/).
HELPERS = [ROOT / "linchpin_common" / "testing_services.py", ROOT / "linchpin_common" / "procs.py"]
OURS = {"tests", "linchpin_common", "linchpin_gateway", "linchpin_connector"}
# Commands of every Debian system (essential packages: bash, util-linux, coreutils).
ESSENTIAL = {"bash", "runuser", "install", "rm", "mkdir", "cut", "umask", "cd", "grep", "sed", "head"}


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {name for line in re.findall(r"(?m)^([^\s#=:][^=:]*):(?!=)", text) for name in line.split()}


def test_every_make_target_the_docs_name_exists():
    targets = make_targets()
    assert {"install", "test", "demo", "bench", "bench-quick", "system-packages"} <= targets, targets
    named = {}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()  # in code: `make X`, or a command line of a code block
        for target in re.findall(r"`make ([a-z][\w-]*)", text) + re.findall(r"(?m)^ {4,}make ([a-z][\w-]*)", text):
            named.setdefault(target, doc.name)
    assert {"test", "demo", "bench", "install"} <= set(named)  # the scan found them
    missing = {target: doc for target, doc in named.items() if target not in targets}
    assert not missing, f"named in the docs, not in the Makefile: {missing}"


def test_ci_runs_make_test():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in lines


def _setup_requirements() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup")
    kw = {k.arg: k.value for k in call.keywords}
    return ast.literal_eval(kw["install_requires"]) + ast.literal_eval(kw["extras_require"])["test"]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules(paths) -> dict[str, str]:
    """Top-level module -> first file importing it, for every absolute import."""
    found: dict[str, str] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path.name)
    return found


def test_setup_py_declares_every_package_the_tests_import():
    declared = {_normal(re.match(r"[A-Za-z0-9._-]+", req).group(0)) for req in _setup_requirements()}
    modules = imported_modules([*sorted(TESTS.glob("*.py")), *HELPERS])
    third_party = {m: f for m, f in modules.items() if m not in sys.stdlib_module_names and m not in OURS}
    assert {"pytest", "hypothesis", "playwright", "paho", "twisted"} <= set(third_party)  # the scan found them
    owners = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, where in third_party.items():
        dists = {_normal(d) for d in owners.get(module, [])}
        if not dists & declared:
            undeclared[module] = (where, sorted(dists))
    assert not undeclared, f"imported by the tests, not in setup.py's install_requires or test extras: {undeclared}"


def _system_packages() -> dict[str, str]:
    """command -> Debian package, from tools/system-packages.sh."""
    return dict(re.findall(r"\[([\w-]+)\]=([\w-]+)", (ROOT / "tools" / "system-packages.sh").read_text()))


STARTERS = {"run", "Popen", "check_call", "check_output", "call", "Process", "Child", "__init__"}


def commands_run_by_tests() -> dict[str, str]:
    """Command -> file, for every command the tests look up or start by name:
    ``shutil.which("X")``, ``_pg_bin("X")``, and argv lists starting with a
    bare name (``["npm", ...]``, ``["redis-server", conf]``)."""
    found: dict[str, str] = {}
    for path in [*sorted(TESTS.glob("*.py")), *HELPERS]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            first = node.args[0] if node.args else None
            if func in ("which", "_pg_bin") and isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.setdefault(first.value, path.name)
            elif (func in STARTERS and isinstance(first, ast.List) and first.elts
                  and isinstance(first.elts[0], ast.Constant) and isinstance(first.elts[0].value, str)
                  and re.fullmatch(r"[a-z][\w-]*", first.elts[0].value)):
                found.setdefault(first.elts[0].value, path.name)
    # the shell lines of README.md (test_readme.py) and docs/getting-started.md
    # (test_getting_started.py) the tests run: the first word of every command
    from tests.test_getting_started import DOC, blocks
    from tests.test_readme import README_BLOCKS, code_lines

    shell = [("README.md", code_lines(start, end)) for start, end in README_BLOCKS]
    shell += [(DOC.name, code) for how, code in blocks(DOC.read_text()) if not how.startswith("skip")]
    for where, code in shell:
        code = re.sub(r"(?m)\s#.*$", "", code)
        for segment in re.split(r"\||;|&&|\$\(|\n", code):
            words = segment.replace("\\", " ").split()
            if words and re.fullmatch(r"[a-z][\w.-]*", words[0]):  # (not an assignment, a redirection, ...)
                found.setdefault(words[0], where)
    # the shell blocks of docs/operations.md the tests run (test_operations_doc.py)
    operations = (ROOT / "docs" / "operations.md").read_text()
    for block in re.findall(r"<!-- test: [^>]*-->\n```sh\n(.*?)```", operations, re.DOTALL):
        for line in block.splitlines():
            if line.strip():
                found.setdefault(line.split()[0], "operations.md")
    return found


def test_system_packages_installs_every_command_the_tests_run():
    needed = _system_packages()
    assert {"initdb", "redis-server", "haproxy", "tinyproxy", "chromium", "nginx", "npm"} <= set(needed)
    commands = commands_run_by_tests()
    # the scan found them where they are used
    assert {"initdb", "pg_ctl", "redis-server", "haproxy", "tinyproxy", "chromium", "nginx", "npm",
            "systemd-analyze", "sqlite3", "curl"} <= set(commands), commands
    venv = Path(sys.executable).parent
    postgres = {"initdb", "pg_ctl"}  # PostgreSQL's server commands: one package
    missing = {command: where for command, where in commands.items()
               if command not in needed and command not in ESSENTIAL and not (venv / command).exists()
               and not (command in postgres and "initdb" in needed)}
    assert not missing, f"run by the tests, not installed by tools/system-packages.sh: {missing}"


LOCK = ROOT / "requirements.lock"


def locked() -> dict[str, tuple[str, list[str]]]:
    """Package -> (pinned version, sha256 hashes), from requirements.lock."""
    pins: dict[str, tuple[str, list[str]]] = {}
    for entry in re.split(r"\n(?=\S)", re.sub(r"(?m)^\s*#.*\n?", "", LOCK.read_text())):
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+)", entry)
        if match:
            pins[_normal(match.group(1))] = (match.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", entry))
    return pins


def test_the_lock_pins_every_requirement_of_setup_py_within_its_bounds():
    from packaging.requirements import Requirement

    pins = locked()
    assert {"twisted", "autobahn", "cryptography", "cffi", "pytest"} <= set(pins), pins  # the parse found them
    for line in _setup_requirements():
        requirement = Requirement(line)
        name = _normal(requirement.name)
        assert name in pins, f"setup.py requires {line}, requirements.lock has no pin for it: run `make lock`"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), \
            f"setup.py requires {line}, requirements.lock pins {name}=={pins[name][0]}: run `make lock`"


def test_every_pin_has_the_hashes_of_its_files():
    for name, (version, hashes) in locked().items():
        assert hashes, f"requirements.lock: {name}=={version} has no --hash"
    # the wheels of a compiled package for more than this machine's platform
    assert len(locked()["cffi"][1]) > 10 and len(locked()["cryptography"][1]) > 10


def test_what_runs_the_tests_is_what_the_lock_pins():
    """CI tests the versions in requirements.lock, not whatever is newest."""
    wrong = {}
    for name, (version, _) in locked().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"locked version, installed version (run `make install`): {wrong}"


def test_make_install_installs_from_the_lock_with_hashes():
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"(?m)^\$\(STAMP\):(.*)\n((?:\t.*\n)+)", text)
    assert "requirements.lock" in recipe.group(1).split()  # a new lock reinstalls
    commands = recipe.group(2)
    assert "--require-hashes -r requirements.lock" in commands
    assert re.search(r"pip install .*--no-deps --no-build-isolation -e \.", commands)  # this checkout adds nothing unlocked
    assert "setuptools" in locked()  # ...and is built by the locked setuptools, not the newest one
    assert "lock" in make_targets()
    assert "\n#    make lock\n" in LOCK.read_text()  # the header says how to refresh it
