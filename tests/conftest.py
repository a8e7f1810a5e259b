"""Shared pytest fixtures (helpers may add their own below: additive edits only)."""

import pytest


@pytest.fixture
def exported_policy(tmp_path):
    """A real exported PPO policy (random weights) for web-diurnal: a directory with policy.npz + card.json."""
    from helpers import export_random_policy

    return export_random_policy(tmp_path / "exported-policy")
