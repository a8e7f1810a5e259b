"""Shared pytest fixtures (helpers may add their own below: additive edits only)."""

import pytest
from hypothesis import settings

# Hypothesis' per-example deadline is a timed assertion: the first example that reaches a numba kernel pays for
# compiling it (0.5 s on a clean checkout), which says nothing about the property under test.
settings.register_profile("rlscale", deadline=None)
settings.load_profile("rlscale")


@pytest.fixture
def exported_policy(tmp_path):
    """A real exported PPO policy (random weights) for web-diurnal: a directory with policy.npz + card.json."""
    from helpers import export_random_policy

    return export_random_policy(tmp_path / "exported-policy")
