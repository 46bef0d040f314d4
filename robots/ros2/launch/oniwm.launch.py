"""Launch ``oniwm_node`` with its parameters file.

::

    ros2 launch oniwm oniwm.launch.py params_file:=/path/to/my.params.yaml
    ros2 launch oniwm oniwm.launch.py params_file:=/path/to/my.params.yaml control_enabled:=true

``params_file`` (default: the installed ``config/oniwm.params.yaml``) gives every parameter (set ``config`` there
to the absolute path of the preset, and ``view: true`` there for the Foxglove live view); ``control_enabled``
(default false: predict only, never command) overrides it.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("oniwm"), "config", "oniwm.params.yaml"])
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params, description="parameters of oniwm_node"),
        DeclareLaunchArgument("control_enabled", default_value="false",
                              description="publish commands on cmd_vel (false: predict only)"),
        Node(package="oniwm", executable="oniwm_node", name="oniwm_node", output="screen",
             parameters=[LaunchConfiguration("params_file"),
                         {"control_enabled": ParameterValue(LaunchConfiguration("control_enabled"), value_type=bool)}]),
    ])
