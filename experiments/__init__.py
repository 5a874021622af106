"""Ablation sweeps over fcn_jax.main runs (sweep runner, report, sweep files)."""
