"""Tools for testing schedulers and policies: a fake executor, strategies, a base state machine."""

from tokensched.testing.fake_executor import FakeExecutor

__all__ = ["FakeExecutor"]
