"""Benchmarks (not tests): `make bench` runs `bench.proxy_bench`, which also runs the others here."""
