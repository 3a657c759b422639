"""Offline evaluation: rosbag2 I/O, COCO mAP, bag evaluation (direct and live), plots. Torch-free."""
