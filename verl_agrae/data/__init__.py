"""Datasets for verl-agrae: the synthetic arithmetic task and converters into verl RL parquet.

Every converter builds its rows with :func:`verl_agrae.data.rl_parquet.make_rl_row` and writes them with
:func:`verl_agrae.data.rl_parquet.write_rl_parquet`, so all datasets share one schema (see ``docs/slurm.md``, "Data").
"""
