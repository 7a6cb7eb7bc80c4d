"""Sandbox drivers: how a function instance's process is created and contained."""
