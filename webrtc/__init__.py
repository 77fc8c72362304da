"""webrtc."""
