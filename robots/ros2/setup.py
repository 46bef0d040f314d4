"""colcon (ament_python) build of the ROS 2 package ``oniwm``: the ``oniwm_node`` executable, its launch file and
parameters. The node's code is the ``oni-worldmodel`` Python package (``robots.ros2.oniwm_node``), installed with
pip into the Python that runs ROS 2 (docs/ros2.md); this package adds what ROS 2 tools look for: the package
marker, package.xml, the launch and parameters files under share/oniwm, and the executable under lib/oniwm.
"""

from glob import glob

from setuptools import setup

PACKAGE = "oniwm"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="oni-worldmodel maintainers",
    maintainer_email="oni-worldmodel@example.org",
    description="The oni-worldmodel runtime as a ROS 2 node (oniwm_node)",
    license="Apache-2.0",
    entry_points={"console_scripts": ["oniwm_node = robots.ros2.oniwm_node:main"]},
)
