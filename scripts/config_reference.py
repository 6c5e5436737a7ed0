"""The config key table of docs/cli.md, generated from the config dataclasses so the reference cannot drift.

    python scripts/config_reference.py          # print the table
    python scripts/config_reference.py --write  # replace it in docs/cli.md
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import PRESET_VALUES, RunConfig, _SECTIONS  # noqa: E402

DOC = ROOT / "docs" / "cli.md"
START, END = "<!-- config-keys:start -->", "<!-- config-keys:end -->"


def _allowed(f: dataclasses.Field) -> str:
    rule = f.metadata.get("rule")
    if rule is None:
        return ""
    parts = [" / ".join(rule.choices)] if rule.choices else []
    parts += [f"{op} {v}" for op, v in ((">", rule.gt), (">=", rule.ge), ("<", rule.lt), ("<=", rule.le)) if v is not None]
    return ", ".join(parts)


def _default(f: dataclasses.Field) -> str:
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return "(none)" if value is None else repr(value).replace("'", '"')


def _rows(cls, prefix: str) -> list[str]:
    rows = ["| key | default | allowed | smoke / paper preset |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name in _SECTIONS or f.name == "config_dir":
            continue
        section = prefix.rstrip(".")
        presets = [str(PRESET_VALUES[p].get(section, {}).get(f.name, "")) for p in ("smoke", "paper")]
        rows.append(f"| `{prefix}{f.name}` | `{_default(f)}` | {_allowed(f)} | {' / '.join(presets) if any(presets) else ''} |")
    return rows


def table() -> str:
    lines = ["Top level:", "", *_rows(RunConfig, "")]
    for name, cls in _SECTIONS.items():
        lines += ["", f"`[{name}]`:", "", *_rows(cls, f"{name}.")]
    return "\n".join(lines)


def document(text: str) -> str:
    """`text` (docs/cli.md) with its key table replaced by the current one."""
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="update docs/cli.md in place")
    args = ap.parse_args()
    if args.write:
        DOC.write_text(document(DOC.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(table())
