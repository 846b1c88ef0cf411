"""Run the examples of a README as written, with smaller sizes: what the docs show cannot
drift from what the code does.

Rules (stated in README.md's "Tests" paragraph too):

* every ```bash block runs, in order, as one bash script (``set -euo pipefail``), in a
  fresh directory holding ``examples/`` and ``plugins/`` of the repository, with
  ``../shared`` beside it, ``$ADVPLUG_DATA`` set and the test environment's ``advplug``
  and ``python`` first on the PATH; ``make`` and ``pip install`` lines are left out (the
  Makefile has installed everything, and ``make test`` is what runs this);
* ```python blocks run as scripts in the same directory, after the bash blocks before
  them; a block whose first line is ``# file: ...`` is a file excerpt and is only compiled;
* sizes shrink (:data:`CAPS`): ``advplug train/study/eval/benchmark`` get at most these
  sizes, and the flags are added where a command leaves them to a config file or a default;
  ``advplug reproduce`` runs with ``--quick``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: per subcommand: flag -> the most the examples may use in tests (added when absent)
CAPS = {
    "train": {"--train-subset": 128, "--test-subset": 16, "--monitor-size": 16, "--epochs": 1},
    # 128 images (one step) leave study models predicting one class, which no attack can move:
    # AutoAttack then spends its whole budget on them; 512 images train past that, and 8 test
    # images per model keep the AutoAttack columns of 8-variant studies short
    "study": {"--train-subset": 512, "--test-subset": 8, "--monitor-size": 16, "--epochs": 1},
    "eval": {"--test-subset": 16},
    "benchmark": {"--n-examples": 8, "--batch-size": 8},
    "reproduce": {},  # runs as --quick (the recipe's own smoke sizes)
}
RESUME_EPOCHS = 2  # a resumed run goes one epoch past the first run's single epoch
SANITY_SAMPLES = 8
SKIPPED = re.compile(r"^\s*(make|pip install)\b")
COMMAND = re.compile(r"\badvplug (train|study|eval|benchmark|reproduce)\b")


def code_blocks(text: str) -> list[tuple[str, int, str]]:
    """(language, line number, body) of every fenced block, indentation removed."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        indent, lang, start, body = len(fence.group(1)), fence.group(2), i + 1, []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        blocks.append((lang, start + 1, "\n".join(body)))
        i += 1
    return blocks


def commands(body: str) -> list[str]:
    """The shell commands of a block: continuation lines joined, trailing comments and
    comment-only lines dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s+)#.*$", "", line).strip()
        if line:
            out.append(line)
    return out


def shrink(command: str) -> str:
    """``command`` with the sizes of an ``advplug`` run capped (see :data:`CAPS`)."""
    found = COMMAND.search(command)
    if not found:
        return command
    sub = found.group(1)
    resume = "--resume" in command
    caps = {"--epochs": RESUME_EPOCHS} if resume else dict(CAPS[sub])
    if "--sanity" in command:
        caps["--sanity-samples"] = SANITY_SAMPLES
    for flag, cap in caps.items():
        pattern = rf"(?<=\s){re.escape(flag)}[ =](\d+)"
        if re.search(pattern, command):
            command = re.sub(pattern, lambda m: f"{flag} {min(int(m.group(1)), cap)}", command)
        else:
            command += f" {flag} {cap}"
    if sub == "reproduce" and "--quick" not in command:
        command += " --quick"
    return command + (" --no-progress" if sub in ("train", "study", "eval", "reproduce") else "")


def script_of(body: str) -> str:
    lines = ["set -euo pipefail"]
    for command in commands(body):
        if SKIPPED.match(command):
            continue
        command = shrink(command)
        lines += [f"echo {_quote('$ ' + command)}", command, 'echo "  (done at ${SECONDS}s)"']
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def workspace(tmp_path: Path) -> Path:
    """A fresh directory as a user's checkout would be: examples/ and plugins/, ../shared."""
    work = tmp_path / "advplug"
    work.mkdir()
    for name in ("examples", "plugins"):
        (work / name).symlink_to(REPO / name)
    shared = REPO.parent / "shared"
    if shared.is_dir():
        (tmp_path / "shared").symlink_to(shared)
    return work


def environment() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("ADVPLUG_DATA", str(REPO.parent / "shared" / "data"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_readme(readme: Path, tmp_path: Path, timeout: int = 900) -> list[str]:
    """Run every block of ``readme``; returns what ran. A failing block raises
    AssertionError with the block's line number and the output."""
    work, env, ran = workspace(tmp_path), environment(), []
    for lang, line, body in code_blocks(readme.read_text()):
        if lang == "bash":
            script = script_of(body)
            proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        elif lang == "python":
            if body.lstrip().startswith("# file:"):
                compile(body, f"{readme.name}:{line}", "exec")
                ran.append(f"compiled python block at line {line}")
                continue
            proc = subprocess.run([sys.executable, "-c", body], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        else:
            continue
        ran.append(f"{lang} block at line {line}")
        assert proc.returncode == 0, (f"{readme.relative_to(REPO)}: the {lang} block at line {line} failed "
                                      f"(exit {proc.returncode})\n--- stdout\n{proc.stdout[-6000:]}\n"
                                      f"--- stderr\n{proc.stderr[-6000:]}")
    return ran
