"""The programs behind the `infergate` command: run, validate, replica, demo, agent, batch,
rollout, drain and scale simulate. The top layer: nothing imports it."""
