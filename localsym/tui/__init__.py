"""The Textual chat. It talks to localsym only through the Session API."""

from localsym.tui.app import ChatApp

__all__ = ["ChatApp"]
