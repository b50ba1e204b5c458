"""A local stand-in for Slack's Web API, Socket Mode and file hosting, for tunebot's tests."""

from .payloads import signed_headers
from .records import Call, Download, Identity, Rejected, Response, SocketAck, UploadedFile
from .server import SlackAPIServer

__all__ = [
    "Call",
    "Download",
    "Identity",
    "Rejected",
    "Response",
    "SlackAPIServer",
    "SocketAck",
    "UploadedFile",
    "signed_headers",
]
