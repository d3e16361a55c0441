"""Step 1: method + normalised path -> Rule. (placeholder: being written)"""
from __future__ import annotations


class RuleConflict(Exception):
    def __init__(self, first: int, second: int, reason: str) -> None:
        self.first, self.second, self.reason = first, second, reason
        super().__init__(reason)


class RuleSet:
    @classmethod
    def compile(cls, routes):  # type: ignore[no-untyped-def]
        return cls()
