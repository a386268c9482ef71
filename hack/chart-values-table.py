#!/usr/bin/env python3
"""The chart README's values table, from the `# --` comments in values.yaml.

`hack/chart-values-table.py` rewrites the table between the markers in charts/secretsync/README.md;
`--check` exits 1 when the README is out of date (tests/chart.rs runs that), so the table cannot drift."""

import pathlib
import re
import sys

CHART = pathlib.Path(__file__).resolve().parent.parent / "charts" / "secretsync"
BEGIN, END = "<!-- values:begin -->", "<!-- values:end -->"


def rows(text):
    path, comment, out = [], [], []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and comment:
            comment.append(stripped[1:].strip())
            continue
        match = re.match(r"^(\s*)([A-Za-z0-9_]+):\s*(.*)$", line)
        if not match:
            comment = []
            continue
        depth = len(match.group(1)) // 2
        path = path[:depth] + [match.group(2)]
        value = match.group(3)
        if comment:
            default = f"`{value}`" if value else "see values.yaml"
            out.append(f"| `{'.'.join(path)}` | {default} | {' '.join(comment)} |")
        comment = []
    return out


def table():
    values = (CHART / "values.yaml").read_text()
    return "\n".join(["| value | default | meaning |", "|---|---|---|", *rows(values)])


def main():
    readme_path = CHART / "README.md"
    readme = readme_path.read_text()
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    wanted = readme[:start] + "\n" + table() + "\n" + readme[end:]
    if "--check" in sys.argv:
        if wanted != readme:
            print("charts/secretsync/README.md: the values table is out of date; run hack/chart-values-table.py", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
