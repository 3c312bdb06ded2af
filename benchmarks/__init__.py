"""Benchmarks of ProxyFlox: scripts that measure, not tests (figures in docs/benchmarks.md).

Run each as a module from the project root, e.g. ``python -m benchmarks.transfer``; they import
``tests.servers`` for their throwaway servers, and their Parsl workers import this package.
"""
