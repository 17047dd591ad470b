"""GPU benchmark harness: the project's trainer path vs TRL (+Liger) on real 7-8B shapes.

Run on the GPU machine; see bench/README.md for the exact commands behind each result.
"""
