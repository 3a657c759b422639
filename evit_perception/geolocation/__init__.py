"""Person geolocation and obstacle bearings from detections, camera model and drone pose."""
