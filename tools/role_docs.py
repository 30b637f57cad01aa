"""Write each role's README.md from its meta/argument_specs.yml (dev-sec hardening's way).

    python tools/role_docs.py          # rewrite the READMEs
    python tools/role_docs.py --check  # exit 1 if any README is stale (make test runs this)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Dict, List

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _cell(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip() if value is not None else ""
    if text.endswith("\n..."):
        text = text[:-4].strip()
    return text.replace("|", "\\|")


MARKUP = re.compile(r"\b[CVOM]\(([^)]*)\)")


def plain(text: str) -> str:
    """Ansible doc markup (C(), V(), O(), M()) as Markdown code."""
    return MARKUP.sub(lambda match: "`%s`" % match.group(1), " ".join(text.split()))


def render(role: Path) -> str:
    specs: Dict[str, Any] = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    lines: List[str] = ["# Role liveupdate.cpr.%s" % role.name, "",
                        "<!-- Generated from meta/argument_specs.yml by tools/role_docs.py; edit that file instead. -->", ""]
    for entry, spec in specs.items():
        heading = "Entry point `%s`" % entry
        lines += ["## %s: %s" % (heading, spec.get("short_description", "")), ""]
        for paragraph in spec.get("description", []):
            lines.append("- %s" % plain(str(paragraph)))
        options = spec.get("options") or {}
        if options:
            lines += ["", "| variable | type | default | description |", "|---|---|---|---|"]
            for name, option in options.items():
                description = option.get("description", "")
                if isinstance(description, list):
                    description = " ".join(description)
                kind = option.get("type", "str")
                if option.get("choices"):
                    kind += " (%s)" % ", ".join(str(c) for c in option["choices"])
                lines.append("| `%s` | %s | %s | %s |" % (
                    name, kind, "`%s`" % _cell(option["default"]) if "default" in option else "",
                    plain(str(description)).replace("|", "\\|")))
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    stale = []
    for role in sorted((ROOT / "roles").iterdir()):
        if not (role / "meta" / "argument_specs.yml").exists():
            continue
        text = render(role)
        readme = role / "README.md"
        if "--check" in sys.argv:
            if not readme.exists() or readme.read_text() != text:
                stale.append(str(readme.relative_to(ROOT)))
        else:
            readme.write_text(text)
    if stale:
        print("stale role READMEs (run `python tools/role_docs.py`): %s" % ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
