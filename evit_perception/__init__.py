"""evit_perception: vision-transformer detection for UAVs on ROS 2.

Data path: camera message -> image_conversion -> preprocess -> backends -> postprocess ->
detection_messages. Nothing here imports torch; it runs on Python 3.8+ with NumPy 1.x or 2.x.
"""
__version__ = "0.1.0"
