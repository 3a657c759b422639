"""Start ``evit_geolocation``: person positions on the ground and obstacle bearings.

Defaults fit a PX4 + MAVROS + camera drone (docs/geolocation.md):
    ros2 launch evit_perception geolocation.launch.py namespace:=uav1 \
        camera_info_topic:=/uav1/camera/camera_info detections_topic:=/uav1/detections
uav.launch.py includes this file when started with ``geolocation:=true``.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

# (name, default, description); every topic argument is a remapping of the node's relative name.
ARGUMENTS = (
    ("namespace", "", "namespace of the node and its relative topics (e.g. uav1)"),
    ("params_file", os.path.join(get_package_share_directory("evit_perception"), "config", "geolocation.yaml"),
     "geolocation parameters (camera mount, ground model, classes, tolerances)"),
    ("detections_topic", "detections", "vision_msgs/Detection2DArray from evit_detector"),
    ("camera_info_topic", "camera/camera_info", "sensor_msgs/CameraInfo of the camera the detector sees"),
    ("pose_topic", "/mavros/local_position/pose",
     "drone pose: geometry_msgs/PoseStamped (MAVROS, ENU) or nav_msgs/Odometry with pose_type:=odometry "
     "(e.g. /mavros/local_position/odom)"),
    ("pose_type", "pose_stamped", "pose_stamped or odometry"),
    ("altitude_topic", "altitude_agl",
     "height above ground when ground_source is agl (std_msgs/Float64) or range (sensor_msgs/Range, "
     "e.g. /mavros/rangefinder_pub)"),
    ("ground_source", "flat", "flat (ground_height parameter), agl or range"),
    ("use_sim_time", "false", "use /clock (bag replay, simulation)"),
)


def generate_launch_description() -> LaunchDescription:
    """The geolocation node with MAVROS-style remappings."""
    arg = LaunchConfiguration
    node = Node(
        package="evit_perception",
        executable="evit_geolocation",
        name="evit_geolocation",
        namespace=arg("namespace"),
        output="screen",
        parameters=[
            arg("params_file"),
            {
                "pose_type": arg("pose_type"),
                "ground_source": arg("ground_source"),
                "use_sim_time": ParameterValue(arg("use_sim_time"), value_type=bool),
            },
        ],
        remappings=[
            ("detections", arg("detections_topic")),
            ("camera_info", arg("camera_info_topic")),
            ("pose", arg("pose_topic")),
            ("altitude_agl", arg("altitude_topic")),
        ],
    )
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in ARGUMENTS]
        + [node])
