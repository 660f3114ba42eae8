"""CUDA sources of the cuda backend, shipped as package data and built just in time."""
