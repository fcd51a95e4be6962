"""Rewrite the built-in recipes (workflows/*.toml) so that each lists every parameter.

Keeps each recipe's header comment, [pipeline] table, chosen algorithms and the values it
sets; adds any parameter it leaves out with the algorithm's default, and refreshes the
comment above each stage (its description and the algorithms available). Run it after
adding an algorithm or a parameter:

    .venv/bin/python scripts/update_recipes.py
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

from qsm_bids import registry

ROOT = Path(__file__).resolve().parent.parent / "workflows"


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def render(path: Path) -> str:
    text = path.read_text()
    data = tomllib.loads(text)
    header = text.split("[pipeline]")[0].rstrip() + "\n\n[pipeline]\n"
    lines = [header.rstrip("\n")]
    for key, value in data["pipeline"].items():
        lines.append(f"{key} = {_value(value)}")
    for stage, (desc, algos) in registry.STAGES.items():
        given = dict(data.get(stage, {}))
        algorithm = given.pop("algorithm", None)
        if algorithm is None:
            continue
        params = registry.resolve(stage, algorithm, given)
        lines += ["", f"# {desc}; algorithms: {', '.join(sorted(algos))}", f"[{stage}]"]
        lines.append(f"algorithm = {_value(algorithm)}")
        lines += [f"{k} = {_value(v)}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    check = "--check" in sys.argv
    stale = []
    for path in sorted(ROOT.glob("*.toml")):
        new = render(path)
        if new != path.read_text():
            stale.append(path.name)
            if not check:
                path.write_text(new)
    if stale:
        print(("out of date: " if check else "rewrote: ") + ", ".join(stale))
    return 1 if check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
