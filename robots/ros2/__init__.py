"""ROS 2 interop, and the ROS 2 package ``oniwm`` (this folder: package.xml, setup.py, launch/, config/).

- :mod:`robots.ros2.convert`: pure conversions between ROS 2 standard messages and ONI messages, on any object
  with the ROS field names (``rosbags``' messages, rclpy's, :mod:`robots.ros2.idl`'s), so bag import and export
  run without a ROS install.
- :mod:`robots.ros2.core`: the node's logic: the world-model runtime fed ROS messages, its outputs as ROS messages.
- :mod:`robots.ros2.oniwm_node`: the node on rclpy (imported when it starts).
- :mod:`robots.ros2.dds_bridge` (``oniwm ros2-bridge``) and :mod:`robots.ros2.idl`: the same over DDS with
  ``cyclonedds``, in ROS 2's naming and encoding.

Importing this package imports neither rclpy nor cyclonedds. ``setup.py`` here is the colcon (ament_python) build
of the ROS package, not a module to import.
"""
