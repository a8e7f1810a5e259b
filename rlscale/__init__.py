"""rlscale: reinforcement-learning autoscaling."""

__version__ = "0.1.0"


def _register() -> None:
    import gymnasium as gym

    if "rlscale/Cluster-v0" not in gym.registry:
        gym.register(
            id="rlscale/Cluster-v0",
            entry_point="rlscale.env:ClusterEnv",
            vector_entry_point="rlscale.env:ClusterVectorEnv",
        )


_register()
