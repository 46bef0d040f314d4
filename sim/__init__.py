"""MuJoCo simulation: procedural hallway worlds, the robot of a description in them, and its sensors at their rates.

``sim.hallway`` generates worlds, ``sim.robot_sim`` steps a robot in one (``RobotSim``), ``sim.sensors`` holds
the simulated sensors and ``sim.config`` the typed settings and preset loader. Importing ``sim`` itself loads
nothing heavy; ``sim.robot_sim`` and ``sim.sensors`` load mujoco.
"""
