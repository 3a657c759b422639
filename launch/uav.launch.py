"""Start ``evit_detector`` on a drone's camera (docs/node.md).

    ros2 launch evit_perception uav.launch.py namespace:=uav1 camera_topic:=/uav1/camera/image_raw
    ros2 launch evit_perception uav.launch.py model:=/data/student_int8.onnx backend:=tensorrt

Every process this file starts gets the Fast DDS large-frames profile
(config/fastdds_large_frames.xml) unless ``fastdds_profile:=''``; a camera driver started
elsewhere needs it too (docs/node.md, "Large frames"). Optional extras: a rosbag2 player
(``bag:=/path/to/bag``) and the geolocation node (``geolocation:=true``).

Topic arguments remap the node's relative names (``image_raw``, ``detections``), so relative
values follow ``namespace`` and absolute ones are used as they are.
"""
import os

from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription,
                            OpaqueFunction, SetEnvironmentVariable)
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "evit_perception"

# (name, default, description). An empty default means "as in params_file".
ARGUMENTS = (
    ("namespace", "", "namespace of the node and its relative topics (e.g. uav1)"),
    ("camera_topic", "camera/image_raw",
     "sensor_msgs/Image topic (input_type raw) or the base topic whose /compressed the node reads; "
     "e.g. /camera/color/image_raw (RealSense), /image_raw (usb_cam), or the ros_gz_bridge topic "
     "of a PX4 SITL camera"),
    ("detections_topic", "detections", "vision_msgs/Detection2DArray output"),
    ("model", "", "model file (.onnx with the evit contract, or .engine); a bare name is looked "
     "up in share/evit_perception/models; empty: model_path from params_file"),
    ("params_file", PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "detector.yaml"]),
     "evit_detector parameters (thresholds, classes, QoS, topics)"),
    ("backend", "", "auto, onnxruntime or tensorrt; empty: as in params_file"),
    ("input_type", "", "raw or compressed; empty: as in params_file"),
    ("qos_reliability", "", "auto, reliable or best_effort; empty: as in params_file"),
    ("use_sim_time", "false", "use /clock (simulation, bag replay with --clock)"),
    ("fastdds_profile",
     PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "fastdds_large_frames.xml"]),
     "Fast DDS XML profile for the processes this launch starts; '' leaves it unset"),
    ("bag", "", "rosbag2 to play beside the detector (ros2 bag play, with the profile); '' = none"),
    ("geolocation", "false", "also start evit_geolocation (geolocation.launch.py)"),
    ("camera_info_topic", "camera/camera_info",
     "sensor_msgs/CameraInfo of the camera (geolocation); follow camera_topic's namespace"),
    ("pose_topic", "/mavros/local_position/pose",
     "drone pose for geolocation: PoseStamped (MAVROS, ENU); see geolocation.launch.py for odometry"),
    ("log_level", "info", "evit_detector log level"),
)

_OVERRIDABLE = ("backend", "input_type", "qos_reliability")


def _detector(context, *args, **kwargs):
    """The node, with only the overrides that were given (the params file stays the source)."""
    def value(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {"use_sim_time": value("use_sim_time").lower() in ("true", "1", "yes")}
    if value("model"):
        overrides["model_path"] = value("model")
    for name in _OVERRIDABLE:
        if value(name):
            overrides[name] = value(name)
    camera = value("camera_topic")
    return [Node(
        package=PACKAGE,
        executable="evit_detector",
        name="evit_detector",
        namespace=value("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[value("params_file"), overrides],
        remappings=[
            ("image_raw", camera),
            # rclpy before Iron does not remap the derived compressed topic; name it too
            ("image_raw/compressed", camera.rstrip("/") + "/compressed"),
            ("detections", value("detections_topic")),
        ],
        ros_arguments=["--log-level", value("log_level")],
    )]


def _profile_env(context, *args, **kwargs):
    """Export the Fast DDS profile (both variable names: Fast DDS 2.x and 3.x) if one is set."""
    profile = LaunchConfiguration("fastdds_profile").perform(context)
    if not profile:
        return []
    if not os.path.isfile(profile):
        raise RuntimeError(f"fastdds_profile {profile!r} does not exist")
    return [SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", profile),
            SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile)]


def _bag_player(context, *args, **kwargs):
    bag = LaunchConfiguration("bag").perform(context)
    if not bag:
        return []
    cmd = ["ros2", "bag", "play", bag]
    if LaunchConfiguration("use_sim_time").perform(context).lower() in ("true", "1", "yes"):
        cmd.append("--clock")
    return [ExecuteProcess(cmd=cmd, output="screen")]


def generate_launch_description() -> LaunchDescription:
    """Detector (+ optional bag player and geolocation) with the large-frames profile."""
    geolocation = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare(PACKAGE), "launch", "geolocation.launch.py"])),
        launch_arguments={
            "namespace": LaunchConfiguration("namespace"),
            "detections_topic": LaunchConfiguration("detections_topic"),
            "use_sim_time": LaunchConfiguration("use_sim_time"),
            "camera_info_topic": LaunchConfiguration("camera_info_topic"),
            "pose_topic": LaunchConfiguration("pose_topic"),
        }.items(),
        condition=IfCondition(LaunchConfiguration("geolocation")),
    )
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, default, text in ARGUMENTS]
        + [OpaqueFunction(function=_profile_env),  # before the processes, so they inherit it
           OpaqueFunction(function=_detector),
           OpaqueFunction(function=_bag_player),
           geolocation])
