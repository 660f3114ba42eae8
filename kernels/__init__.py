"""Triton kernels and their launchers (installed as ``stquery.kernels``): attention, topk, pool."""
