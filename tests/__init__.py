"""Tests drive a real gateway process through real HTTP clients; see tests/fakes.py."""
