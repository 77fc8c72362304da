"""webrtc: WebRTC ingest. Placeholder, being written."""
from .errors import *  # noqa
from .frame_buffer import BufferState, BufferedFrame, FrameBuffer, FrameBufferStats  # noqa
