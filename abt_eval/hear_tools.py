"""Install the HEAR 2021 tools (hearvalidator, heareval) into this interpreter's environment.

    .venv/bin/python -m abt_eval.hear_tools install [--no-tf] [--dry-run]
    .venv/bin/python -m abt_eval.hear_tools needs            # print what they need, one per line

Their published metadata cannot be resolved on Python >= 3.9 (numpy 1.19 pins, ``python_requires<3.9``),
so the two packages are installed with ``--no-deps --ignore-requires-python`` and then what they really
import: the ``hear-tools`` extra of the installed hear-abt (pyproject.toml is the only list). Why each is
needed and what ``--no-tf`` is for: ``docs/evaluation.md`` ("The HEAR tools").
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence

DISTRIBUTION = "hear-abt"
EXTRA = "hear-tools"
TOOLS = ("hearvalidator==2021.0.6", "heareval==2021.1.3")
TENSORFLOW = "tensorflow-cpu"

_EXTRA_MARKER = re.compile(r"""\bextra\s*==\s*['"]([^'"]+)['"]""")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The project name of a requirement string (``"pytorch-lightning<2"`` -> ``"pytorch-lightning"``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return _normalise(match[1])


def extra_requirements(requires: Sequence[str], extra: str = EXTRA) -> list[str]:
    """The requirements (without their marker) that ``requires`` (distribution metadata) lists for ``extra``."""
    out = []
    for line in requires:
        spec, _, marker = line.partition(";")
        if any(_normalise(m) == _normalise(extra) for m in _EXTRA_MARKER.findall(marker)):
            out.append(spec.strip())
    return out


def hear_tool_needs(no_tf: bool = False) -> list[str]:
    """What the HEAR tools import, from the installed hear-abt's ``hear-tools`` extra."""
    try:
        requires = md.requires(DISTRIBUTION) or []
    except md.PackageNotFoundError:
        raise SystemExit(
            f"{DISTRIBUTION} is not installed in {sys.executable}: install it first "
            '(from a checkout: .venv/bin/pip install -e ".[dev]")'
        ) from None
    needs = extra_requirements(requires)
    if not needs:
        raise SystemExit(f"the installed {DISTRIBUTION} lists no '{EXTRA}' extra: reinstall it")
    if no_tf:
        needs = [r for r in needs if requirement_name(r) != TENSORFLOW]
    return needs


def install_commands(no_tf: bool = False, python: str = sys.executable) -> list[list[str]]:
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    return [pip + ["--no-deps", "--ignore-requires-python", *TOOLS], pip + hear_tool_needs(no_tf)]


SMOKE_CHECK = """
import importlib.metadata as md
import heareval.embeddings.runner, heareval.predictions.runner, hearvalidator  # noqa
for p in ("hearvalidator", "heareval", "pytorch-lightning", "tensorflow-cpu", "torch", "numpy"):
    try:
        print(f"{p}=={md.version(p)}")
    except md.PackageNotFoundError:
        print(f"{p}: not installed")
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m abt_eval.hear_tools", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="install hearvalidator and heareval with their real needs")
    inst.add_argument(
        "--no-tf",
        action="store_true",
        help=f"skip {TENSORFLOW} (on a GPU machine it stops heareval's embeddings runner; both tools import it)",
    )
    inst.add_argument("--dry-run", action="store_true", help="print the pip commands only")
    needs = sub.add_parser("needs", help="print the HEAR tools' run-time needs (the hear-tools extra)")
    needs.add_argument("--no-tf", action="store_true")
    args = ap.parse_args(argv)

    if args.command == "needs":
        print("\n".join(hear_tool_needs(args.no_tf)))
        return 0
    for cmd in install_commands(args.no_tf):
        print("$ " + shlex.join(cmd), flush=True)
        if not args.dry_run:
            subprocess.run(cmd, check=True)
    if args.dry_run:
        return 0
    # Do not run `pip check` afterwards: it always complains about the pins ignored here.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-c", SMOKE_CHECK], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
