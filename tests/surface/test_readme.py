"""The README's test command is the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_commands = [b for b in blocks if "pytest" in b]
    assert len(test_commands) == 1
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_commands[0].strip() in ci_lines


def _python_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)\n```", readme, flags=re.S)


def test_readme_python_examples_run():
    from plugformer.core.loader import reset

    api, plugin = _python_blocks()[:2]
    reset()
    try:
        ns: dict = {}
        exec(compile(api, "README.md", "exec"), ns)
        assert ns["logits"].shape == (1, 3, 49152)
        assert ns["reply"].text and ns["out"].token_ids
        ns = {}
        exec(compile(plugin, "README.md", "exec"), ns)
        assert ns["engine"].attention_config.name == "my_attention"
        assert ns["engine"].logits([[256, 72, 105]]).shape == (1, 3, 258)
    finally:
        reset()
